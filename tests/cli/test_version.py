import importlib.metadata

import pytest

import llmlab
from llmlab.cli.main import main


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"llmlab {llmlab.__version__}\n"


def test_the_version_attribute_equals_the_installed_package_metadata():
    assert llmlab.__version__ == importlib.metadata.version("llmlab")

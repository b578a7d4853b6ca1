import pytest

from llmlab.cli.main import main
from llmlab.cli.presets import human_count, preset_rows
from llmlab.model import presets
from tests.model.test_presets import PUBLISHED

# Published counts given to the parameter (transformers' own classes at the HF checkpoints' configs).
EXACT = {(name, size): count for name, size, count, source, _ in PUBLISHED
         if source.startswith("HF checkpoint") and name in ("gpt2", "llama", "opt", "bloom")}


def test_counts_equal_the_published_checkpoints():
    counts = {(row["preset"], row["size"]): row["parameters"] for row in preset_rows(["gpt2", "llama", "opt", "bloom"])}
    assert {key: counts[key] for key in EXACT} == EXACT
    assert EXACT[("gpt2", "124m")] == 124_439_808  # tied head counted once


@pytest.mark.parametrize("count, text", [(124_439_808, "124.4M"), (6_738_415_616, "6.74B"), (595_200, "595.2K")])
def test_counts_read_the_way_papers_write_them(count, text):
    assert human_count(count) == text


# GPT-2's shape at tiny size (vocabulary 1024, 256 positions, width 128, 2 layers, MLP 512, tied head):
TINY_GPT2 = 1024 * 128 + 256 * 128 + 2 * (4 * 128 + (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512)
                                       + (512 * 128 + 128)) + 2 * 128


def test_one_family_is_a_table_of_its_sizes(capsys):
    assert human_count(TINY_GPT2) == "560.6K"
    assert main(["presets", "gpt2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["preset", "size", "parameters", "layers", "d_model", "heads", "arch"]
    assert [line.split() for line in lines[1:]] == [
        ["gpt2", "124m", "124.4M", "12", "768", "12", "decoder"],
        ["gpt2", "355m", "354.8M", "24", "1024", "16", "decoder"],
        ["gpt2", "774m", "774.0M", "36", "1280", "20", "decoder"],
        ["gpt2", "1.5b", "1.56B", "48", "1600", "25", "decoder"],
        ["gpt2", "tiny", "560.6K", "2", "128", "4", "decoder"],
    ]


def test_all_presets_are_listed(monkeypatch, capsys):
    monkeypatch.setattr("llmlab.cli.presets.preset_rows", lambda names: [
        {"preset": name, "size": "s", "parameters": 1, "layers": 1, "d_model": 1, "heads": 1, "arch": "decoder"}
        for name in names])
    assert main(["presets"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == presets.names()


def test_an_unknown_preset_is_an_error_naming_the_known_ones(capsys):
    assert main(["presets", "gtp2"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "'gtp2'" in error and "gpt2" in error and "llama" in error
    assert error.count("\n") == 1

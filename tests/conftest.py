"""Suite-wide test settings: Hypothesis profiles and skipping of GPU-only tests."""

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one process per core already; more threads only contend for the tiny models here


def pytest_collection_modifyitems(config, items):
    """Skip tests marked gpu when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)

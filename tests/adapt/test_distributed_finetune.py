"""`llmlab finetune` under torchrun: two DDP processes (gloo, CPU) of an SFT run follow one process with the same
global batch — the same losses and the same final weights — and only rank 0 writes."""

import json
from pathlib import Path

import pytest
import torch

import llmlab
from llmlab.adapt.synthetic import write_tasks
from llmlab.cli.main import main
from tests.adapt.test_finetune import RECIPE, small
from tests.train.test_distributed import torchrun

pytestmark = pytest.mark.xdist_group("distributed")  # with the other torchrun tests on one xdist worker


def losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record]


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_sft_under_torchrun_follows_one_process(tiny_checkpoint, tmp_path, adapter):
    data = write_tasks(tmp_path / "tasks.jsonl", 60, seed=0, tasks=["addition", "copy", "upper"])
    overrides = [*small(tiny_checkpoint, data), f"adapter.kind={adapter}", "train.eval_every=0"]
    assert main(["finetune", RECIPE, "--out", str(tmp_path / "single"), "--no-progress", *overrides]) == 0
    printed = torchrun("llmlab", "finetune", RECIPE, "--out", str(tmp_path / "ddp"), "--no-progress",
                       "train.parallel=ddp", *overrides, timeout=300)
    assert printed.count("wrote") == 1  # rank 0 only
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), abs=1e-5)
    single, ddp = (llmlab.load(tmp_path / run / "final").state_dict() for run in ("single", "ddp"))
    assert single.keys() == ddp.keys()
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("main_rank", [True, False])
def test_only_rank_zero_writes_a_lora_final_and_replaces_the_runs_own(monkeypatch, tmp_path, main_rank):
    from llmlab.adapt import finetune, lora
    from llmlab.train import distributed

    written = []
    monkeypatch.setattr(distributed, "is_main", lambda: main_rank)
    monkeypatch.setattr(lora, "save_adapter", lambda model, final, base, overwrite=False: written.append(overwrite))
    final = finetune.save_final(None, tmp_path / "final", tmp_path, 3, None, "", adapter=True)
    assert final == tmp_path / "final" and written == ([True] if main_rank else [])

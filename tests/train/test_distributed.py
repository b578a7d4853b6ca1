"""Distributed training on the CPU with gloo: DDP and FSDP2 runs of 2 processes started by torchrun follow a
single-process run with the same global batch, and their sharded checkpoints reload at another world size."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import llmlab
from llmlab.cli.main import main
from llmlab.errors import ConfigError
from llmlab.model import presets
from llmlab.model.transformer import Model
from llmlab.train import distributed
from llmlab.train.checkpoint import SHARDED_DIRECTORY, STATE_FILE, checkpoint_steps
from llmlab.train.loop import CHECKPOINTS_DIRECTORY, TrainConfig, Trainer
from tests.train.test_loop import Windows

pytestmark = pytest.mark.xdist_group("distributed")  # with --dist loadgroup these share one xdist worker

REPOSITORY = Path(__file__).parents[2]
MODEL = presets.llama("tiny", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, vocab_size=128)
TOKENS = (torch.arange(4000) * 7 + torch.arange(4000) // 13) % 128
# grad_accum 2 of 4-row micro-batches: each of 2 ranks takes 2 rows of each; a constant schedule so that runs of
# different lengths take the same steps; clipping at 1.0 is active (the first gradient norms are above 2)
CONFIG = TrainConfig(steps=4, lr=1e-2, schedule="constant", grad_accum=2, grad_clip=1.0, checkpoint_every=2,
                     keep_last=0, log_every=1, eval_every=2, eval_batches=2, seed=3)  # fmt: skip


class UnevenLabels(Windows):
    """Windows whose first two rows have some labels ignored, more in some draws than in others, so that the ranks
    and the micro-batches of a step hold unequal label counts."""

    def __next__(self):
        batch = super().__next__()
        labels = batch["labels"].clone()
        labels[0, : 3 + 4 * (self.drawn % 3)] = -100
        labels[1, 3:6] = -100
        return {**batch, "labels": labels}


def make_trainer(run_dir, parallel="none", steps=4) -> Trainer:
    """A fresh model and trainer, as each process of a run builds them; distributed, each rank takes its rows."""
    torch.manual_seed(0)
    batches, held_out = UnevenLabels(TOKENS, 4, 16, seed=1), UnevenLabels(TOKENS, 4, 16, seed=2)
    held_out = [next(held_out) for _ in range(CONFIG.eval_batches)]
    if distributed.is_distributed():
        batches = distributed.RankRows(batches)
        held_out = [distributed.rank_rows(batch, distributed.rank(), distributed.world_size()) for batch in held_out]
    return Trainer(Model(MODEL), replace(CONFIG, parallel=parallel, steps=steps), batches, held_out=held_out,
                   run_dir=run_dir, progress=False)  # fmt: skip


def logged(run_dir: Path, name: str) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record[name] for record in records if name in record]


def worker(parallel: str, out: Path, single_checkpoint: Path) -> None:
    """What each torchrun process runs: a 4-step run, and a run resumed from a single-process checkpoint."""
    assert distributed.setup() and distributed.world_size() == 2
    results = {}
    try:
        make_trainer(None, "none")
    except ConfigError as error:
        results["none_error"] = str(error)
    trainer = make_trainer(out / "run", parallel)
    trainer.fit()
    trainer.save_model(out / "run" / "final")
    resumed = make_trainer(out / "resumed", parallel)
    resumed.resume(single_checkpoint)
    results["resumed_losses"] = resumed.fit()
    if distributed.is_main():
        (out / "results.json").write_text(json.dumps(results))
    distributed.teardown()


def torchrun(module: str, *arguments: str, timeout: int = 240) -> str:
    """Run `python -m module arguments` in 2 processes with torchrun (one thread each); its stdout, once it succeeded."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", module,
               *arguments]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    finished = subprocess.run(command, cwd=REPOSITORY, env=environment, capture_output=True, text=True,
                              timeout=timeout)
    assert finished.returncode == 0, finished.stderr[-4000:]
    return finished.stdout


def launch(parallel: str, out: Path, single_checkpoint: Path) -> dict:
    """Run worker in 2 processes with torchrun; rank 0's results."""
    torchrun("tests.train.test_distributed", parallel, str(out), str(single_checkpoint))
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process with the whole global batch, 4 steps with checkpoints at 2 and 4."""
    run_dir = tmp_path_factory.mktemp("single")
    trainer = make_trainer(run_dir)
    trainer.fit()
    return trainer


def test_the_reference_loss_is_the_mean_over_the_global_batchs_labels(single):
    # step 1's loss, from a fresh model on both micro-batches at once: cross-entropy over every labelled position
    torch.manual_seed(0)
    model, batches = Model(MODEL), UnevenLabels(TOKENS, 4, 16, seed=1)
    first, second = next(batches), next(batches)
    whole = {name: torch.cat([first[name], second[name]]) for name in first}
    logits = model(whole["input_ids"]).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), whole["labels"][:, 1:].flatten(),
                                                 ignore_index=-100)  # fmt: skip
    assert single.losses[0] == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_follow_one_and_reload_at_world_size_one(parallel, single, tmp_path):
    single_checkpoints = single.run_dir / CHECKPOINTS_DIRECTORY
    results = launch(parallel, tmp_path, single_checkpoints / "step-2")
    run_dir = tmp_path / "run"
    assert "train.parallel" in results["none_error"]
    # the losses (rank 0's metrics only, one line a step), held-out losses and final model follow the single process
    assert logged(run_dir, "loss") == pytest.approx(logged(single.run_dir, "loss"), abs=1e-5)
    assert len(logged(run_dir, "loss")) == 4
    assert logged(run_dir, "eval_loss") == pytest.approx(logged(single.run_dir, "eval_loss"), abs=1e-5)
    final = llmlab.load(run_dir / "final").state_dict()
    for name, tensor in single.model.state_dict().items():
        torch.testing.assert_close(final[name], tensor, rtol=0, atol=1e-5, msg=name)
    # a single-process checkpoint resumed by 2 processes goes on as the single process did
    assert results["resumed_losses"] == pytest.approx(single.losses[2:], abs=1e-5)
    # the sharded checkpoint of step 4, read by one process: the single run's weights and AdamW moments, step, data
    assert [step for step, _ in checkpoint_steps(run_dir / CHECKPOINTS_DIRECTORY)] == [2, 4]
    step_4 = run_dir / CHECKPOINTS_DIRECTORY / "step-4"
    assert (step_4 / SHARDED_DIRECTORY).is_dir() and not (step_4 / "model.safetensors").exists()
    assert len(torch.load(step_4 / STATE_FILE, weights_only=True)["rng"]) == 2  # one per rank
    reloaded = make_trainer(tmp_path / "reloaded", steps=6)
    reloaded.resume(step_4)
    assert reloaded.step == 4 and reloaded.batches.drawn == single.batches.drawn
    for name, tensor in single.model.state_dict().items():
        torch.testing.assert_close(reloaded.model.state_dict()[name], tensor, rtol=0, atol=1e-5, msg=name)
    expected_moments, moments = single.optimizer.state_dict()["state"], reloaded.optimizer.state_dict()["state"]
    assert moments.keys() == expected_moments.keys()
    for index, expected in expected_moments.items():  # the moments in gradient units: the mean and the RMS
        torch.testing.assert_close(moments[index]["exp_avg"], expected["exp_avg"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(moments[index]["exp_avg_sq"].sqrt(), expected["exp_avg_sq"].sqrt(), rtol=1e-4,
                                   atol=1e-6)  # fmt: skip
        assert moments[index]["step"] == expected["step"] == 4
    # and trains on at world size 1 as the single process does
    continued = make_trainer(tmp_path / "continued", steps=6)
    continued.resume(single_checkpoints / "step-4")
    assert reloaded.fit() == pytest.approx(continued.fit(), abs=1e-5)


def test_llmlab_pretrain_under_torchrun_follows_one_process(tmp_path):
    recipe = str(REPOSITORY / "recipes" / "tiny.yaml")
    overrides = ["data.max_chars=20000", "data.vocab_size=300", "data.seq_len=32", "model.d_model=64",
                 "model.n_layers=2", "model.d_ff=128", "train.steps=3", "train.log_every=1", "train.eval_every=0",
                 "train.sample_every=3", "train.sample_tokens=4", "train.checkpoint_every=3"]  # fmt: skip
    assert main(["pretrain", recipe, "--out", str(tmp_path / "single"), "--no-progress", *overrides]) == 0
    printed = torchrun("llmlab", "pretrain", recipe, "--out", str(tmp_path / "fsdp"), "--no-progress",
                       "train.parallel=fsdp", *overrides)
    assert printed.count("wrote") == 1  # rank 0 only
    assert logged(tmp_path / "fsdp", "loss") == pytest.approx(logged(tmp_path / "single", "loss"), abs=1e-5)
    assert logged(tmp_path / "fsdp", "sample") == logged(tmp_path / "single", "sample")
    assert (tmp_path / "fsdp" / CHECKPOINTS_DIRECTORY / "step-3" / SHARDED_DIRECTORY).is_dir()
    single, sharded = (llmlab.load(tmp_path / run / "final").state_dict() for run in ("single", "fsdp"))
    for name, tensor in single.items():
        torch.testing.assert_close(sharded[name], tensor, rtol=0, atol=1e-5, msg=name)


def test_a_batch_that_does_not_split_evenly_over_the_ranks_is_refused():
    batch = {"input_ids": torch.zeros(3, 4), "labels": torch.zeros(3, 4)}
    assert torch.equal(distributed.rank_rows({"x": torch.arange(6)}, 1, 2)["x"], torch.tensor([3, 4, 5]))
    with pytest.raises(ConfigError, match="batch_size"):
        distributed.rank_rows(batch, 0, 2)


def test_invalid_parallel_settings_name_the_field():
    with pytest.raises(ConfigError, match="train.parallel"):
        TrainConfig(parallel="zero")
    with pytest.raises(ConfigError, match="train.reduce_precision"):
        TrainConfig(reduce_precision="fp8")


def test_setup_without_torchrun_is_a_no_op(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.setup() is False and not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.teardown()


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
    distributed.end_process(0)

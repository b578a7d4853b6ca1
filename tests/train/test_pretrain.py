"""`llmlab pretrain`: bit-exact resume after SIGKILL, and bad input refused with exit code 2, nothing overwritten."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import llmlab
from llmlab.cli.main import main
from llmlab.data.mixture import Mixture, MixtureSource
from llmlab.data.shards import TokenArray, token_dtype, write_index, write_shard
from llmlab.data.tokenizer import load_tokenizer
from llmlab.errors import ConfigError
from llmlab.objectives import PrefixLM
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.data import StepBatches

TINY = str(Path(__file__).parents[2] / "recipes" / "tiny.yaml")
SMALL = ["data.max_chars=60000", "data.vocab_size=512", "data.seq_len=32", "data.batch_size=4", "model.d_model=64",
         "model.n_layers=2", "model.n_heads=2", "model.d_ff=128", "model.dropout=0.1", "train.steps=40",
         "train.warmup=4", "train.checkpoint_every=5", "train.eval_every=10", "train.log_every=1",
         "train.sample_every=20"]  # fmt: skip


def pretrain(out, *extra):
    return main(["pretrain", TINY, "--out", str(out), "--no-progress", *SMALL, *extra])


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def final_weights(run: Path) -> bytes:
    return (run / "final" / "model.safetensors").read_bytes()


def losses_by_step(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert pretrain(out) == 0
    return out


def test_a_run_killed_and_resumed_ends_bit_identical(finished_run, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "llmlab", "pretrain", TINY, "--out", str(out), "--no-progress", *SMALL]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # first killed just after its first checkpoint, then resumed and killed at a random moment, then resumed to the end
    for extra, wait_for_checkpoint, delay in (([], True, 0.3), (["--resume"], False, 2.0)):
        process = subprocess.Popen(command + extra, env=environment, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while wait_for_checkpoint and latest_checkpoint(out / "checkpoints") is None and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(random.uniform(0, delay))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if wait_for_checkpoint:
            assert latest_checkpoint(out / "checkpoints") is not None and not (out / "final").exists()  # mid-run
    assert pretrain(out, "--resume") == 0
    assert final_weights(out) == final_weights(finished_run)
    assert losses_by_step(out) == losses_by_step(finished_run)
    assert len(losses_by_step(out)) == 40


def test_a_run_killed_before_its_first_checkpoint_starts_over(finished_run, tmp_path):
    out = tmp_path / "early"
    assert pretrain(out, "train.steps=3", "train.checkpoint_every=0") == 0  # leaves metrics and a tokenizer behind
    shutil.rmtree(out / "final")
    assert pretrain(out, "--resume") == 0
    assert final_weights(out) == final_weights(finished_run)
    assert losses_by_step(out) == losses_by_step(finished_run)


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 41, "lo')
    assert pretrain(run, "--resume") == 0
    assert losses_by_step(run) == losses_by_step(finished_run)


def test_the_final_model_loads_and_learned(finished_run):
    model = llmlab.load(finished_run / "final")
    assert model.config.d_model == 64 and (finished_run / "final" / "tokenizer.json").exists()
    losses = losses_by_step(finished_run)
    assert losses[40] < losses[1] - 0.5
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    samples = [record for record in records if "sample" in record]
    assert [record["step"] for record in samples] == [20, 40] and samples[0]["sample"].startswith("Return the")
    assert [record["step"] for record in records if "eval_loss" in record] == [10, 20, 30, 40]


def test_a_missing_shard_directory_is_refused(tmp_path, capsys):
    assert pretrain(tmp_path / "run", f"data.source={tmp_path / 'shards'}") == 2
    assert "shards does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_shard_directory_without_an_index_is_refused(tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.tokens").write_bytes(b"\0" * 10)
    assert pretrain(tmp_path / "run", f"data.source={tmp_path / 'shards'}") == 2
    assert "has no index.json" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unknown_recipe_field_is_refused(tmp_path, capsys):
    assert pretrain(tmp_path / "run", "train.learning_rate=0.1") == 2
    assert "learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_not_overwritten_without_resume(finished_run, capsys):
    before = snapshot(finished_run)
    assert pretrain(finished_run) == 2
    assert "--resume" in capsys.readouterr().err
    assert snapshot(finished_run) == before


def test_a_resume_past_the_requested_steps_is_refused_and_replacing_final_is_said(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    assert pretrain(run, "--resume", "train.steps=20") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "step-40" in error and "train.steps=20" in error and error.count("\n") == 1
    assert snapshot(run) == before
    (run / "final" / "notes.txt").write_text("mine")
    assert pretrain(run, "--resume", "train.steps=42") == 0
    assert f"replacing {run / 'final'} with the model at step 42" in capsys.readouterr().err
    assert json.loads((run / "final" / "llmlab.json").read_text())["metadata"]["step"] == 42
    assert (run / "final" / "notes.txt").read_text() == "mine"


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "run").write_text("mine")
    assert pretrain(tmp_path / "run") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --out") and "is a file" in error and (tmp_path / "run").read_text() == "mine"


def test_a_jsonl_file_as_data_source_is_not_a_shard_directory(tmp_path, capsys):
    (tmp_path / "one.jsonl").write_text('{"text": "hello"}\n')
    assert pretrain(tmp_path / "run", f"data.source={tmp_path / 'one.jsonl'}") == 2
    error = capsys.readouterr().err
    assert "one.jsonl is a file, not a shard directory" in error and "llmlab data tokenize" in error
    assert not (tmp_path / "run").exists()


def corrupt(run: Path, file: str, how: str) -> None:
    path = latest_checkpoint(run / "checkpoints") / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if how == "truncate" else b"garbage" * 10)


@pytest.mark.parametrize(
    ("damage", "extra", "message"),
    [
        (None, ["model.n_layers=3"], "another architecture"),
        (("model.safetensors", "truncate"), [], "model.safetensors"),
        (("train_state.pt", "truncate"), [], "train_state.pt"),
        (("train_state.pt", "garbage"), [], "train_state.pt"),
    ],
)
def test_a_bad_checkpoint_is_refused_and_nothing_is_overwritten(finished_run, tmp_path, capsys, damage, extra, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if damage is not None:
        corrupt(run, *damage)
    before = snapshot(run)
    assert pretrain(run, "--resume", *extra) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1
    assert snapshot(run) == before


def test_shards_without_a_tokenizer_train_with_the_vocabulary_of_their_index(tmp_path):
    documents = [(np.arange(n) * 7 % 99 + 1).tolist() for n in range(20, 200)]
    write_index(tmp_path / "shards", [write_shard(tmp_path / "shards", "a", documents, token_dtype(100), 0)], 100, 0)
    assert pretrain(tmp_path / "run", f"data.source={tmp_path / 'shards'}", "train.steps=4",
                    "train.checkpoint_every=0", "train.sample_every=0") == 0  # fmt: skip
    assert llmlab.load(tmp_path / "run" / "final").config.vocab_size == 100


def test_tokenized_jsonl_blended_from_two_shard_directories_trains_with_their_tokenizer(finished_run, tmp_path):
    texts = [f"Return the {word} of the list, or None when it is empty." for word in ("sum", "length", "maximum")]
    for name, repeat in (("a", 40), ("b", 20)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"body": text}) + "\n" for text in texts * repeat))
        assert main(["data", "tokenize", str(tmp_path / f"{name}.jsonl"), "--tokenizer", str(finished_run / "data"),
                     "--out", str(tmp_path / name), "--text-field", "body", "--no-progress"]) == 0
    sources = f"data.sources=[{{path: {tmp_path / 'a'}, weight: 0.7}}, {{path: {tmp_path / 'b'}, epochs: 1}}]"
    assert pretrain(tmp_path / "run", "data.source=null", sources) == 2  # weight and epochs mixed
    sources = f"data.sources=[{{path: {tmp_path / 'a'}, weight: 0.7}}, {{path: {tmp_path / 'b'}, weight: 0.3}}]"
    assert pretrain(tmp_path / "run", "data.source=null", sources, "train.steps=4", "train.checkpoint_every=0") == 0
    tokenizer = load_tokenizer(tmp_path / "run" / "final")
    assert tokenizer.to_str() == load_tokenizer(finished_run / "data").to_str()
    assert llmlab.load(tmp_path / "run" / "final").config.vocab_size == tokenizer.get_vocab_size()


# each objective on a tiny model of a family it fits, a few steps on the bundled corpus
OBJECTIVE_MODELS = {"causal": "llama", "prefix_lm": "prefix_llama", "span_corruption": "t5", "ul2": "prefix_llama",
                    "glm": "glm", "mlm": "bert"}


@pytest.mark.parametrize("objective", list(OBJECTIVE_MODELS))
def test_every_objective_pretrains_from_a_recipe_and_its_loss_falls(objective, tmp_path):
    assert main(["pretrain", TINY, "--out", str(tmp_path / "run"), "--no-progress", *SMALL[:3], "data.batch_size=8",
                 "model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.d_ff=128", "train.steps=20",
                 "train.lr=5e-3", "train.warmup=2", "train.log_every=1", "train.checkpoint_every=0",
                 "train.eval_every=0", "train.sample_every=20", f"model.preset={OBJECTIVE_MODELS[objective]}",
                 f"objective.name={objective}"]) == 0  # fmt: skip
    losses = list(losses_by_step(tmp_path / "run").values())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("sample" in record for record in records) == (objective not in ("glm", "mlm"))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["objective.name=mlm"], "mlm objective cannot train model.arch decoder"),
        (["objective.name=glm"], "glm objective cannot train model.arch decoder"),
        (["objective.name=span_corruption", "objective.decoder_only=false"], "span_corruption objective cannot"),
        (["objective.name=causal", "model.preset=t5"], "causal objective cannot train model.arch encoder_decoder"),
        (["objective.name=causal", "model.preset=glm"], "model.position glm2d"),
    ],
)
def test_an_objective_that_does_not_fit_the_architecture_is_refused_before_anything_is_written(
        tmp_path, capsys, overrides, named):
    assert pretrain(tmp_path / "run", *overrides) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_step_batches_split_one_global_batch_over_ranks_and_resume_by_step():
    mixture = Mixture([MixtureSource(TokenArray(np.arange(4000) % 97))], seq_len=16, seed=1)
    single = StepBatches(mixture, PrefixLM(), batch_size=8, seed=5)
    batches = [next(single) for _ in range(4)]
    ranks = [StepBatches(mixture, PrefixLM(), batch_size=8, seed=5, rank=r, world_size=2) for r in range(2)]
    for rank in ranks:
        rank.load_state_dict({"step": 3})  # a resumed run
    halves = [next(rank) for rank in ranks]
    for name, value in batches[3].items():  # the random prefix lengths too: drawn for the whole batch, then split
        assert torch.equal(torch.cat([halves[0][name], halves[1][name]]), value)
    assert single.state_dict() == {"step": 4} and ranks[0].state_dict() == {"step": 4}
    assert not torch.equal(batches[0]["input_ids"], batches[1]["input_ids"])
    with pytest.raises(ConfigError, match="batch_size 6"):
        StepBatches(mixture, PrefixLM(), batch_size=6, world_size=4)

"""`llmlab experiment`: variants × seeds as run directories, their results, resume, divergence, bad files."""

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from llmlab.cli.main import main
from llmlab.train.experiment import final_metrics
from tests.cli_run import run_cli

TINY = str(Path(__file__).parents[2] / "recipes" / "tiny.yaml")
SMALL = ["data.max_chars=60000", "data.vocab_size=512", "data.seq_len=32", "data.batch_size=4", "model.d_model=32",
         "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2", "model.d_ff=64", "train.steps=6",
         "train.warmup=1", "train.eval_every=3", "train.eval_batches=2", "train.log_every=1",
         "train.checkpoint_every=3", "train.sample_every=0"]  # fmt: skip


def write_experiment(directory: Path, **fields) -> Path:
    data = {"recipe": TINY, "seeds": [0, 1],
            "variants": {"dense": SMALL, "moe-2": [*SMALL, "model.n_experts=2"]}, **fields}
    path = directory / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    directory = tmp_path_factory.mktemp("experiment")
    out = directory / "out"
    assert main(["experiment", str(write_experiment(directory)), "--out", str(out), "--no-progress"]) == 0
    return directory, out


def test_every_variant_and_seed_is_a_run_and_a_row(finished):
    _, out = finished
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [(row["variant"], row["seed"]) for row in rows] == [("dense", "0"), ("dense", "1"), ("moe-2", "0"),
                                                               ("moe-2", "1")]
    for row in rows:
        run = out / row["run"]
        config = json.loads((run / "final" / "llmlab.json").read_text())["config"]
        assert config["n_experts"] == (2 if row["variant"] == "moe-2" else 0)
        evaluations = [json.loads(line)["eval_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                       if "eval_loss" in line]
        assert len(evaluations) == 2 and float(row["eval_loss"]) == pytest.approx(evaluations[-1])
    weights = {row["seed"]: (out / row["run"] / "final" / "model.safetensors").read_bytes() for row in rows
               if row["variant"] == "dense"}
    assert weights["0"] != weights["1"]  # the seed reaches the initialisation
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")


def test_a_rerun_trains_nothing_again(finished, capsys):
    directory, out = finished
    before = snapshot(out / "runs")
    code, printed, _ = run_cli(["experiment", str(directory / "experiment.yaml"), "--out", str(out),
                                "--no-progress"], capsys)
    assert code == 0 and "moe-2" in printed and snapshot(out / "runs") == before


@pytest.mark.parametrize("losses, skipped, diverged", [([5.0, 4.0, 3.5], 0, False), ([5.0, 9.0, 6.0], 0, True),
                                                       ([5.0, 4.0, float("nan")], 0, True), ([5.0, 4.0, 3.5], 2, True)])
def test_a_run_diverged_when_its_last_loss_is_not_below_its_first_or_steps_were_skipped(tmp_path, losses, skipped,
                                                                                         diverged):
    records = [{"step": 10 * (index + 1), "loss": loss, "skipped_steps": skipped if index == len(losses) - 1 else 0}
               for index, loss in enumerate(losses)]
    records.append({"step": 30, "eval_loss": 4.2})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    found = final_metrics(tmp_path)
    assert found["diverged"] is diverged and found["eval_loss"] == 4.2 and found["first_loss"] == 5.0


@pytest.mark.parametrize("fields, said", [
    ({"runs": 3}, "has no field 'runs'"),
    ({"variants": {"a b": []}}, "variants must map names"),
    ({"variants": {"a": "model.d_model=32"}}, "variants must map names"),
    ({"seeds": [0, -1]}, "seeds must be a list of non-negative whole numbers"),
    ({"variants": {"a": ["model.no_such_field=1"]}}, "names no field of model"),
    ({"x": "train.lr", "variants": {"a-lr1e-3": ["train.lr=1e-3"], "b": []}}, "the variant b does not set it once"),
    ({"probes": ["copy", "perplexity"]}, "probes must be a list of copy, continuation"),
    ({"tokenize_as": "gpt2"}, "tokenize_as must be an objective"),
])
def test_a_bad_experiment_file_is_one_sentence_and_exit_2(tmp_path, capsys, fields, said):
    code, _, error = run_cli(["experiment", str(write_experiment(tmp_path, **fields)), "--out",
                              str(tmp_path / "out")], capsys)
    assert code == 2 and said in error and error.count("\n") == 1 and not (tmp_path / "out").exists()


def test_held_out_loss_at_other_lengths_is_the_mean_cross_entropy_of_those_windows(finished):
    import torch

    import llmlab
    from llmlab.data.mixture import Mixture
    from llmlab.train.data import open_sources
    from llmlab.train.experiment import held_out_loss_at
    from llmlab.train.recipe import load_recipe

    _, out = finished
    run = out / "runs" / "dense-s0"
    recipe = load_recipe(TINY, [*SMALL, f"data.source={out / 'data-causal-512-60000'}"])
    model = llmlab.load(run / "final").eval()
    for length in (32, 48):
        windows = Mixture(open_sources(recipe.data), length, 0, recipe.data.held_out_fraction, split="held_out",
                          split_seq_len=recipe.data.seq_len)  # after the training windows (tests/data/test_mixture.py)
        count = min(64, len(windows)) // 4 * 4
        ids = torch.from_numpy(windows.samples(0, count)).long()
        with torch.no_grad():  # written out: next-token cross-entropy over every window's positions
            logits = model(ids).logits[:, :-1]
            reference = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        assert held_out_loss_at(run, recipe, length) == pytest.approx(float(reference), rel=1e-5)


def test_a_rerun_may_add_variants_but_not_change_one(finished, tmp_path, capsys):
    import shutil

    directory, trained = finished
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    before = snapshot(out / "runs")
    changed = write_experiment(tmp_path, variants={"dense": [*SMALL, "train.lr=1e-4"]})
    code, _, error = run_cli(["experiment", str(changed), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "holds runs of the variant dense" in error and snapshot(out / "runs") == before
    added = write_experiment(tmp_path, variants={"dense": SMALL, "wide": [*SMALL, "model.d_ff=128"]})
    code, printed, _ = run_cli(["experiment", str(added), "--out", str(out), "--no-progress"], capsys)
    assert code == 0 and "wide" in printed
    after = snapshot(out / "runs")
    assert {name: data for name, data in after.items() if name.startswith("dense")} == \
        {name: data for name, data in before.items() if name.startswith("dense")}
    assert (out / "runs" / "wide-s1" / "final" / "llmlab.json").is_file()
    dropped = write_experiment(tmp_path, variants={"wide": [*SMALL, "model.d_ff=128"]})
    assert run_cli(["experiment", str(dropped), "--out", str(out), "--no-progress"], capsys)[0] == 0
    changed = write_experiment(tmp_path, variants={"dense": [*SMALL, "train.lr=1e-4"]})
    code, _, error = run_cli(["experiment", str(changed), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "holds runs of the variant dense" in error  # remembered while left out


def test_variants_are_grouped_by_name_without_the_value_of_x(tmp_path):
    from llmlab.train.experiment import load_experiment

    variants = {"post-lr1e-3": ["model.norm_placement=post", "train.lr=1e-3"], "pre-lr3e-2": ["train.lr=3e-2"]}
    experiment = load_experiment(write_experiment(tmp_path, x="train.lr", variants=variants))
    assert [experiment.group(name) for name in variants] == ["post-lr", "pre-lr"]
    assert [experiment.x_value(name) for name in variants] == [1e-3, 3e-2]


def test_an_experiment_drawn_against_x_writes_its_figure(tmp_path, capsys):
    variants = {"a-lr1e-3": [*SMALL, "train.lr=1e-3"], "a-lr1e-2": [*SMALL, "train.lr=1e-2"]}
    path = write_experiment(tmp_path, x="train.lr", variants=variants, seeds=[0])
    code, printed, _ = run_cli(["experiment", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 0 and "a-lr1e-2" in printed
    assert (tmp_path / "out" / "results.png").read_bytes().startswith(b"\x89PNG")


def test_shared_overrides_reach_every_variant_and_may_not_change_on_a_rerun(tmp_path, capsys):
    variants = {"a": SMALL, "b": [*SMALL, "model.d_ff=128"]}
    path = write_experiment(tmp_path, variants=variants, seeds=[0], overrides=["model.norm_eps=0.0001", "model.d_ff=96"])
    out = tmp_path / "out"
    assert run_cli(["experiment", str(path), "--out", str(out), "--no-progress"], capsys)[0] == 0
    configs = {name: json.loads((out / "runs" / f"{name}-s0" / "final" / "llmlab.json").read_text())["config"]
               for name in variants}
    assert [(c["norm_eps"], c["d_ff"]) for c in configs.values()] == [(1e-4, 64), (1e-4, 128)]  # a variant's own win
    changed = write_experiment(tmp_path, variants=variants, seeds=[0], overrides=["model.norm_eps=0.001"])
    code, _, error = run_cli(["experiment", str(changed), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "trained with the overrides" in error
    retokenized = write_experiment(tmp_path, variants=variants, seeds=[0], tokenize_as="ul2",
                                   overrides=["model.norm_eps=0.0001", "model.d_ff=96"])
    code, _, error = run_cli(["experiment", str(retokenized), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "tokenized for each objective, not for ul2" in error


@pytest.mark.parametrize("name", ["positions", "norms", "norms-noclip", "moe", "duplicates", "objectives"])
def test_the_shipped_experiments_load_and_every_variant_builds(name):
    from llmlab.train.experiment import load_experiment
    from llmlab.train.recipe import load_recipe

    experiment = load_experiment(Path(__file__).parents[2] / "recipes" / "experiments" / f"{name}.yaml")
    assert len(experiment.seeds) >= 3
    for overrides in experiment.variants.values():
        recipe = load_recipe(experiment.recipe, [*experiment.overrides, *overrides])
        recipe.model_config(vocab_size=recipe.data.vocab_size)  # a ModelConfig that validates


class _Copier(torch.nn.Module):
    """A fake model that predicts, at every position, the token half the context back (a perfect copier)."""

    def __init__(self, vocab: int, context: int, perfect: bool):
        super().__init__()
        self.config = SimpleNamespace(max_seq_len=context, vocab_size=vocab)
        self.tokenizer, self.device, self.perfect = None, torch.device("cpu"), perfect

    def forward(self, ids):
        half = ids.shape[1] // 2
        logits = torch.zeros(*ids.shape, self.config.vocab_size)
        if self.perfect:  # position t predicts token t + 1, which is token t + 1 - half
            logits[:, half - 1:-1].scatter_(-1, ids[:, :half, None], 50.0)
        return SimpleNamespace(logits=logits)


def test_the_copy_probe_scores_a_perfect_copier_and_a_uniform_guesser_as_worked_out_by_hand():
    from llmlab.train.experiment import copy_probe

    perfect = copy_probe(_Copier(vocab=10, context=16, perfect=True))
    assert perfect["copy_accuracy"] == 1.0
    assert perfect["copy_loss"] == pytest.approx(9 * math.exp(-50), abs=1e-12)  # −log(e^50/(e^50+9)) ≈ 9e^-50
    assert perfect["first_copy_loss"] == pytest.approx(math.log(10))
    uniform = copy_probe(_Copier(vocab=10, context=16, perfect=False))
    assert uniform["copy_loss"] == pytest.approx(math.log(10))


def test_the_cli_prints_each_probes_columns_as_results_csv_holds_them(tmp_path, capsys):
    path = write_experiment(tmp_path, variants={"dense": SMALL}, seeds=[0], probes=["copy"])
    code, printed, _ = run_cli(["experiment", str(path), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    (row,) = csv.DictReader((tmp_path / "out" / "results.csv").read_text().splitlines())
    header, values = next((line, printed.splitlines()[i + 1]) for i, line in enumerate(printed.splitlines())
                          if "copy_accuracy" in line)
    assert code == 0 and header.split()[1:4] == ["copy_loss", "first_copy_loss", "copy_accuracy"]
    assert [float(value) for value in values.split()[1:]] == pytest.approx(
        [float(row[column]) for column in ("copy_loss", "first_copy_loss", "copy_accuracy")], abs=1e-4)

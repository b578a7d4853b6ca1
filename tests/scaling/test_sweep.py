"""`llmlab scaling sweep`: the IsoFLOP grid's arithmetic by hand, a tiny sweep's runs and fit, resume, bad input."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from llmlab.cli.main import main
from llmlab.scaling.sweep import plan
from llmlab.train.recipe import load_recipe
from tests.cli_run import run_cli

RECIPES = Path(__file__).parents[2] / "recipes"
TINY = str(RECIPES / "tiny.yaml")
COMPUTE_OPTIMAL = str(RECIPES / "experiments" / "compute-optimal.yaml")
SMALL = ["data.max_chars=60000", "data.vocab_size=512", "data.seq_len=32", "data.batch_size=4",
         "train.eval_batches=2"]
BUDGETS, SIZES = "4e8,1e9", "16x1,24x1,32x1"


def llama_parameters(vocab: int, d: int, layers: int, d_ff: int, tied: bool) -> int:
    """A LLaMA block's weights written out: q, k, v, o (4d²), SwiGLU's three matrices, two RMSNorm gains per layer,
    the final norm, the embedding and (untied) the head."""
    return vocab * d * (1 if tied else 2) + layers * (4 * d * d + 3 * d * d_ff + 2 * d) + d


def test_grid_tokens_are_budget_over_six_n():
    recipe = load_recipe(COMPUTE_OPTIMAL, ["data.batch_size=4", "data.seq_len=32"])
    grid = plan(recipe, [6e9, 6e10], sizes=["32x2"], seeds=[0, 1])
    n = llama_parameters(512, 32, 2, 88, tied=True)  # d_ff = 8·32/3 = 85.3, rounded up to a multiple of 8
    assert n == 41632
    # D = 6e9 / (6 · 41632) = 24020.0 tokens = 187.66 steps of 4 × 32 tokens → 188 steps, 24064 tokens
    assert [(p.budget, p.seed, p.params, p.steps, p.tokens) for p in grid] == [
        (6e9, 0, n, 188, 24064), (6e9, 1, n, 188, 24064), (6e10, 0, n, 1877, 240256), (6e10, 1, n, 1877, 240256)]
    assert grid[0].name == "C6e+09-32x2-s0"


def test_default_sizes_lie_within_two_to_two_hundred_tokens_per_parameter():
    recipe = load_recipe(COMPUTE_OPTIMAL)
    # C = 6e10: D/N = 1e10/N²; 16x1 (11568 parameters) 74.7, 40x2 (60360) 2.74, 48x2 (80112) 1.56 < 2
    assert llama_parameters(512, 16, 1, 48, tied=True) == 11568
    assert llama_parameters(512, 40, 2, 112, tied=True) == 60360
    assert llama_parameters(512, 48, 2, 128, tied=True) == 80112
    assert [point.size for point in plan(recipe, [6e10])] == ["16x1", "24x1", "32x1", "32x2", "40x2"]


def arguments(out, *extra, budgets=BUDGETS, sizes=SIZES) -> list[str]:
    return ["scaling", "sweep", TINY, "--budgets", budgets, "--sizes", sizes, "--out", str(out), "--no-progress",
            *SMALL, *extra]


def sweep(out, capsys, *extra, **options):
    return run_cli(arguments(out, *extra, **options), capsys)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid"
    assert main(arguments(out)) == 0
    return out


def test_a_sweep_trains_one_run_directory_per_grid_point_and_fits_them(finished_sweep):
    rows = list(csv.DictReader((finished_sweep / "points.csv").read_text().splitlines()))
    untied = {size: llama_parameters(512, d, 1, d_ff, tied=False) for size, d, d_ff in
              (("16x1", 16, 48), ("24x1", 24, 64), ("32x1", 32, 88))}  # tiny.yaml's LLaMA keeps its head untied
    assert [(row["size"], float(row["flops"])) for row in rows] == [
        (size, budget) for budget in (4e8, 1e9) for size in ("16x1", "24x1", "32x1")]
    for row in rows:
        n, budget = untied[row["size"]], float(row["flops"])
        assert int(row["params"]) == n
        assert int(row["steps"]) == round(budget / (6 * n) / (4 * 32)) and int(row["tokens"]) == int(row["steps"]) * 128
        run = finished_sweep / row["run"]
        assert (run / "final" / "llmlab.json").is_file()
        evaluations = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                       if "eval_loss" in line]
        assert evaluations[-1]["step"] == int(row["steps"])
        assert float(row["loss"]) == pytest.approx(evaluations[-1]["eval_loss"], abs=1e-6)
    result = json.loads((finished_sweep / "fit.json").read_text())
    assert result["law"] == "chinchilla" and result["rows"] == 6
    assert isinstance(result["approach1"], dict) and len(result["approach1"]["budgets"]) == 2
    assert (finished_sweep / "fit.png").read_bytes().startswith(b"\x89PNG")


def test_a_rerun_skips_finished_runs_and_resumes_an_unfinished_one(finished_sweep, tmp_path, capsys):
    out = tmp_path / "grid"
    shutil.copytree(finished_sweep, out)
    before = snapshot(out)
    assert sweep(out, capsys)[0] == 0  # all finished: no run is touched
    assert {name: data for name, data in snapshot(out / "runs").items()} == \
        {name[len("runs/"):]: data for name, data in before.items() if name.startswith("runs/")}
    killed = out / "runs" / "C1e+09-16x1-s0"  # 66 steps, a checkpoint every 17: step-51 is the newest kept
    shutil.rmtree(killed / "final")
    (checkpoint,) = (killed / "checkpoints").iterdir()
    step = int(checkpoint.name.removeprefix("step-"))
    assert step < 66
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    (killed / "metrics.jsonl").write_text("\n".join(lines[:len(kept) + 1]) + "\n")  # and a record past it
    code, out_text, _ = sweep(out, capsys)
    assert code == 0 and "chinchilla fit to 6 runs" in out_text
    # resumed, not restarted: the records up to the checkpoint are the first run's (their step times included)
    assert (killed / "metrics.jsonl").read_text().splitlines()[:len(kept)] == kept
    assert (killed / "final" / "model.safetensors").read_bytes() == \
        before["runs/C1e+09-16x1-s0/final/model.safetensors"]
    others = {name: data for name, data in snapshot(out / "runs").items() if not name.startswith(killed.name)}
    assert others == {name[len("runs/"):]: data for name, data in before.items()
                      if name.startswith("runs/") and not name.startswith(f"runs/{killed.name}")}


@pytest.mark.parametrize("options, said", [
    (dict(budgets="1e3,1e9"), "--budgets: 1e+03 FLOPs leaves no size a run of at least 10 steps"),
    (dict(budgets="1e9,,3e9"), "--budgets is '1e9,,3e9'"),
    (dict(budgets="lots"), "--budgets is 'lots'"),
    (dict(budgets="0,1e9"), "--budgets is '0,1e9'"),
    (dict(sizes="16x1,17x3"), "--sizes names '17x3', which is no size of the sweep"),
    (dict(sizes="16x1,"), "--sizes is '16x1,'"),
    (dict(budgets="1e9", sizes="16x1"), "the Chinchilla fit needs at least 5 runs of two or more sizes"),
])
def test_bad_input_is_one_sentence_naming_the_field_and_exit_2(tmp_path, capsys, options, said):
    code, _, error = sweep(tmp_path / "grid", capsys, **options)
    assert code == 2 and error.startswith("error: ") and said in error and error.count("\n") == 1
    assert not (tmp_path / "grid").exists()


def test_bad_seeds_exit_2(tmp_path, capsys):
    code, _, error = sweep(tmp_path / "grid", capsys, "--seeds", "0,one")
    assert code == 2 and "--seeds is '0,one'" in error and error.count("\n") == 1


def test_an_out_that_holds_other_files_or_another_sweep_is_refused_untouched(finished_sweep, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, error = sweep(mine, capsys)
    assert code == 2 and "holds files but no sweep.json" in error and snapshot(mine) == {"notes.txt": b"mine"}
    (tmp_path / "file").write_text("mine")
    code, _, error = sweep(tmp_path / "file", capsys)
    assert code == 2 and "is a file, not a directory of runs" in error
    before = snapshot(finished_sweep)
    code, _, error = sweep(finished_sweep, capsys, "train.lr=1e-3")
    assert code == 2 and "holds runs of another recipe" in error and snapshot(finished_sweep) == before


def test_a_bad_override_is_named_and_nothing_is_written(tmp_path, capsys):
    code, _, error = sweep(tmp_path / "grid", capsys, "train.stpes=3")
    assert code == 2 and "the override 'train.stpes=3'" in error and not (tmp_path / "grid").exists()

"""`llmlab data run --executor ray` on a local Ray cluster of two worker CPUs started here: every output file has the
bytes of the local executor's (near-duplicate decisions included), with 1 and 4 tasks at once; a driver SIGKILLed
mid-run and run again, and a worker process killed mid-task (Ray reruns it), change nothing and redo no finished
task. Skipped, with the reason, where Ray is not installed or cannot start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmlab.data.pipeline import run_pipeline
from llmlab.data.pipeline_recipe import load_pipeline_recipe, recipe_from_dict
from tests.data.test_pipeline import full_recipe, output_files, planted_corpus, write_recipe

pytestmark = pytest.mark.xdist_group("ray")
RUN_FIELDS = ("executor", "workers", "tasks", "seconds", "documents_per_second")  # how it ran, not what it made
SOURCE = str(Path(__file__).parents[2] / "src")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster (two CPUs, so two worker processes) for this module; its address."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'llmlab[scale]')")
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE, os.environ.get("PYTHONPATH")]))
    try:
        context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as error:  # noqa: BLE001 - any reason Ray cannot start here is a reason to skip
        pytest.skip(f"a local Ray cluster cannot start here ({error})")
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A planted corpus (exact and near duplicates across files) and the local executor's output on it."""
    root = tmp_path_factory.mktemp("ray")
    planted_corpus(root / "corpus", files=6, per_file=30, words=200)
    recipe = recipe_from_dict(full_recipe(root, root / "corpus"))
    report = run_pipeline(recipe, root / "local", progress=False)
    dedup = next(stage for stage in report["stages"] if stage["stage"] == "dedup")
    assert dedup["counts"]["near_duplicates"] == 5 and dedup["counts"]["exact_duplicates"] == 5
    return root, output_files(root / "local"), what_it_made(root / "local")


def what_it_made(output: Path) -> dict:
    """report.json without the fields that say how the run went (executor, workers, tasks, seconds)."""
    report = json.loads((output / "report.json").read_text())
    return {key: value for key, value in report.items() if key not in RUN_FIELDS}


@pytest.mark.parametrize("workers", [1, 4])
def test_ray_outputs_are_the_local_executors_bytes(cluster, corpus, workers):
    root, expected, made = corpus
    recipe = recipe_from_dict(full_recipe(root, root / "corpus", workers))
    report = run_pipeline(recipe, root / f"ray{workers}", progress=False, executor="ray", address=cluster)
    assert output_files(root / f"ray{workers}") == expected
    assert what_it_made(root / f"ray{workers}") == made
    assert report["executor"] == "ray" and report["workers"] == workers
    assert report["tasks"]["clean"] == [6, 6] and report["tasks"]["dedup"] == [3 * 6 + 2 * 6] * 2  # 6 buckets


def _driver(recipe: Path, out: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmlab", "data", "run", str(recipe), "--out", str(out),
                             "--no-progress", "--executor", "ray", "--address", address, "--workers", "2"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _markers(out: Path) -> dict[Path, int]:
    """The done markers of finished tasks and their modification times."""
    patterns = ("units/**/*.json", "units/**/*.exact.npy", "units/**/*.near.npy", "dedup/buckets/*.npy")
    return {path: path.stat().st_mtime_ns for pattern in patterns for path in out.glob(pattern)}


@pytest.mark.parametrize("kill_point", ["*.clean.json", "*.near.npy"])
def test_driver_sigkilled_mid_run_and_rerun(cluster, corpus, tmp_path, kill_point):
    root, expected, made = corpus
    recipe = write_recipe(tmp_path / "recipe.yaml", full_recipe(root, root / "corpus", 2))
    out = tmp_path / "out"
    process = _driver(recipe, out, cluster)
    deadline = time.monotonic() + 60
    while process.poll() is None and len(list(out.rglob(kill_point))) < 2 and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before {kill_point}: {process.stderr.read()}"
    time.sleep(1)  # a task the driver had started may still finish (its outputs are atomic)
    finished = _markers(out)
    assert finished and not (out / "report.json").exists()
    report = run_pipeline(load_pipeline_recipe(recipe), out, progress=False, executor="ray", address=cluster)
    assert output_files(out) == expected and what_it_made(out) == made
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in finished.items()), "a finished task was redone"
    cleaned_before = sum(path.name.endswith(".clean.json") for path in finished)
    assert report["tasks"]["clean"] == [6, 6 - cleaned_before]
    assert report["tasks"]["dedup"][1] < report["tasks"]["dedup"][0] or kill_point == "*.clean.json"


def _our_workers(name: str) -> list[int]:
    """The processes below this one (the cluster's workers) running the Ray task NAME now."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = []
    for pid in parents:
        chain, parent = 0, parents.get(pid)
        while parent and parent != os.getpid() and chain < 10:
            parent, chain = parents.get(parent), chain + 1
        if parent == os.getpid():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(f"ray::{name}".encode()):
                    found.append(pid)
            except OSError:
                continue
    return found


def test_worker_killed_mid_task_is_rerun(cluster, corpus, tmp_path):
    root, expected, made = corpus
    recipe = write_recipe(tmp_path / "recipe.yaml", full_recipe(root, root / "corpus", 2))
    out = tmp_path / "out"
    process = _driver(recipe, out, cluster)
    killed, deadline = [], time.monotonic() + 60
    while process.poll() is None and not killed and time.monotonic() < deadline:
        for pid in _our_workers("finish_unit"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.001)
    assert process.wait(timeout=120) == 0, process.stderr.read()
    assert killed, "no worker was seen running a task"
    assert output_files(out) == expected and what_it_made(out) == made
    report = json.loads((out / "report.json").read_text())
    assert report["tasks"]["tokenize"] == [6, 6]


def test_without_ray_or_with_address_but_local_the_error_is_one_sentence(monkeypatch, tmp_path, capsys):
    from llmlab.cli.main import main
    from llmlab.data.executors import make_executor
    from llmlab.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as where it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'llmlab\[scale\]'"):
        make_executor("ray")
    recipe = write_recipe(tmp_path / "r.yaml", {"sources": [{"path": str(tmp_path)}]})
    assert main(["data", "run", str(recipe), "--out", str(tmp_path / "out"), "--address", "x:1"]) == 2
    assert "--executor ray" in capsys.readouterr().err and not (tmp_path / "out").exists()

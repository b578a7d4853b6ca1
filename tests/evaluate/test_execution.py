"""The executor of generated code: HumanEval's canonical solutions pass, broken ones fail, and runaway programs
(an infinite loop, a fork bomb, a 10 GB allocation, a write outside the directory) are contained as failures."""

import os
import socket
from pathlib import Path

import pytest

from llmlab.errors import ConfigError, DataError
from llmlab.evaluate.execution import (ExecutionLimits, ExecutionResult, evaluate_samples, humaneval_pass_at_k,
                                       read_problems, run_program, run_programs)

from .shared import shared_data

HUMANEVAL = shared_data("HumanEval.jsonl.gz")
needs_humaneval = pytest.mark.skipif(not HUMANEVAL.is_file(), reason="../shared/data/HumanEval.jsonl.gz is absent")
QUICK = ExecutionLimits(timeout=3, max_processes=16)


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def run_contained(source: str, tmp_path: Path, limits: ExecutionLimits = QUICK):
    """Run `source` with its temporary directories under tmp_path; assert nothing of it is left running."""
    result = run_program(source, limits, tmp_root=tmp_path)
    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []  # its directory is gone
    return result


@needs_humaneval
def test_every_canonical_solution_passes(tmp_path):
    problems = read_problems(HUMANEVAL)
    assert len(problems) == 164
    samples = [{"task_id": task_id, "completion": p["canonical_solution"]} for task_id, p in problems.items()]
    results = evaluate_samples(problems, samples, QUICK, workers=2, progress=False, tmp_root=tmp_path)
    failures = {s["task_id"]: r.detail for s, r in zip(samples, results) if not r.passed}
    assert failures == {}


@needs_humaneval
@pytest.mark.parametrize("completion", ["    raise NotImplementedError\n", "    return (\n", "    return 'wrong'\n"])
def test_broken_solutions_fail(completion, tmp_path):
    problems = dict(list(read_problems(HUMANEVAL).items())[:8])
    samples = [{"task_id": task_id, "completion": completion} for task_id in problems]
    results = evaluate_samples(problems, samples, QUICK, workers=2, progress=False, tmp_root=tmp_path)
    assert [r.status for r in results] == ["failed"] * len(samples)


def test_passing_and_failing_programs_and_captured_output(tmp_path):
    ok = run_contained("print('out')\nimport sys\nprint('err', file=sys.stderr)\n", tmp_path)
    assert (ok.status, ok.stdout, ok.stderr) == ("passed", "out\n", "err\n")
    bad = run_contained("assert 1 + 1 == 3, 'arithmetic'\n", tmp_path)
    assert bad.status == "failed" and bad.detail == "AssertionError: arithmetic"
    for exits in ("import sys; sys.exit(0)", "exit()"):  # as in human-eval, exiting is not passing
        assert run_contained(exits, tmp_path).status == "failed"
    assert run_contained("if __name__ == '__main__':\n    raise SystemExit(1)\n", tmp_path).passed


def test_infinite_loop_times_out(tmp_path):
    result = run_contained("while True:\n    pass\n", tmp_path, ExecutionLimits(timeout=2))
    assert result.status == "timed out" and not result.passed


def test_cpu_limit_kills_a_busy_loop_before_the_timeout(tmp_path):
    result = run_contained("while True:\n    pass\n", tmp_path, ExecutionLimits(timeout=30, cpu_seconds=1))
    assert result.status == "failed" and result.signal is not None


def test_a_10_gb_allocation_fails(tmp_path):
    result = run_contained("x = bytearray(10 * 2**30)\n", tmp_path)
    assert result.status == "failed" and "MemoryError" in result.detail


def test_a_huge_file_is_cut_by_the_file_size_limit(tmp_path):
    source = "with open('big', 'wb') as f:\n    f.write(b'x' * (64 * 2**20))\n"
    result = run_contained(source, tmp_path, ExecutionLimits(timeout=5, file_size_bytes=2**20))
    assert result.status == "failed"


def test_output_is_truncated(tmp_path):
    result = run_contained("print('y' * 100000)\n", tmp_path, ExecutionLimits(timeout=3, max_output_bytes=1000))
    assert result.passed and result.stdout.startswith("y" * 1000) and result.stdout.endswith("[output truncated]")


def test_a_background_process_does_not_outlive_its_sample(tmp_path):
    source = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n"
    result = run_contained(source, tmp_path)  # the helper asserts no process is left
    assert result.passed


def _limits_can_stop_a_fork_bomb(limits: ExecutionLimits) -> bool:
    """True when RLIMIT_NPROC binds the sample: it runs unprivileged (root ignores the process limit)."""
    probe = run_program("import os\nassert os.getuid() != 0\n", limits)
    return probe.passed


def test_a_fork_bomb_is_contained(tmp_path):
    limits = ExecutionLimits(timeout=3, max_processes=16, nice=19)
    if not _limits_can_stop_a_fork_bomb(limits):
        pytest.skip("samples run as root here, which RLIMIT_NPROC does not bind: a fork bomb is not run")
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_contained(bomb, tmp_path, limits)
    assert result.status == "timed out"


def test_a_write_outside_the_directory_is_refused(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    source = f"open('../escape.txt', 'w').write('x')\nopen({str(outside)!r}, 'w').write('x')\n"
    result = run_program(source, QUICK, tmp_root=tmp_path)
    if result.isolation.user is None:
        pytest.skip("samples run as the evaluator's own user here: docs/evaluation.md says writes are not prevented")
    assert result.status == "failed" and "PermissionError" in result.detail
    assert not outside.exists()


def test_no_network_where_a_namespace_is_allowed(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=2)\n"
        result = run_contained(source, tmp_path)
    if not result.isolation.network:
        pytest.skip("the platform refused a network namespace; the result says so")
    assert result.status == "failed" and "Error" in result.detail  # ENETUNREACH: no interface is up


def test_without_namespaces_the_process_group_is_still_killed(tmp_path):
    limits = ExecutionLimits(timeout=2, namespaces=False)
    result = run_contained("import os, time\nif os.fork() == 0:\n    time.sleep(600)\ntime.sleep(600)\n", tmp_path,
                           limits)
    assert result.status == "timed out"
    assert (result.isolation.network, result.isolation.pids) == (False, False)


def test_run_programs_keeps_order(tmp_path):
    sources = [f"assert {i} % 2 == 0\n" for i in range(6)]
    results = run_programs(sources, QUICK, workers=2, progress=False, tmp_root=tmp_path)
    assert [r.passed for r in results] == [True, False] * 3


def test_bad_input_is_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="timeout"):
        ExecutionLimits(timeout=0)
    with pytest.raises(DataError, match="does not exist"):
        read_problems(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"task_id": "x"}\n')
    with pytest.raises(DataError, match="Line 1 of .* lacks the field"):
        read_problems(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="'nope'"):
        evaluate_samples({}, [{"task_id": "nope", "completion": ""}], progress=False)


def test_humaneval_pass_at_k_counts_per_task():
    def result(passed):
        return ExecutionResult("passed" if passed else "failed", "", 0, None, "", "", None, 0.0)

    samples = [{"task_id": "a"}] * 3 + [{"task_id": "b"}] * 3
    results = [result(p) for p in (True, False, False, True, True, False)]
    scores = humaneval_pass_at_k(samples, results, ks=(1, 2, 4))
    assert set(scores) == {"pass@1", "pass@2"}  # 4 > the 3 samples per task
    assert scores["pass@1"].value == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert scores["pass@2"].value == pytest.approx(((1 - 1 / 3) + 1.0) / 2)  # a: 1 − C(2,2)/C(3,2); b: n − c < k

"""HumanEval-style execution of untrusted generated code, one process per sample, under limits.

Each sample runs in a child process started with `python -I` (never in the evaluator's), in a fresh temporary
directory, with a wall-clock timeout and CPU-time, address-space, file-size, open-file and process-count limits;
on Linux it also gets new network and PID namespaces when the kernel permits (no network; every process it starts
dies with it), and when the evaluator runs as root the sample runs as `nobody`. Output is captured, and on timeout
the whole process group is killed. This is containment of accidents, not a security sandbox: see
docs/evaluation.md for what it does and does not protect against.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from ..errors import ConfigError, DataError
from .metrics import Aggregate, mean_pass_at_k

_RUNNER = Path(__file__).with_name("_runner.py")
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
_GRACE_SECONDS = 5.0  # for killed processes to be gone
HUMANEVAL_KEYS = ("task_id", "prompt", "test", "entry_point")


@dataclass(frozen=True)
class ExecutionLimits:
    """Limits for one sample; `cpu_seconds` defaults to the timeout rounded up."""

    timeout: float = 10.0  # wall-clock seconds, the runner's start-up included
    cpu_seconds: int | None = None
    memory_bytes: int = 2 * 2**30  # RLIMIT_AS: address space, so a 10 GB allocation fails at once
    file_size_bytes: int = 16 * 2**20  # RLIMIT_FSIZE: the largest file (or captured output) it may write
    max_processes: int = 32  # RLIMIT_NPROC: processes and threads of the sample's user
    max_open_files: int = 256
    max_output_bytes: int = 64 * 1024  # of stdout and of stderr kept in the result
    nice: int = 10
    namespaces: bool = True  # try new network and PID namespaces (Linux)
    user: str | None = "nobody"  # the user a root evaluator runs samples as; None keeps root (no process limit)

    def __post_init__(self):
        for name in ("timeout", "memory_bytes", "file_size_bytes", "max_processes", "max_open_files"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ExecutionLimits.{name} must be positive, got {getattr(self, name)!r}.")
        if self.cpu_seconds is not None and self.cpu_seconds <= 0:
            raise ConfigError(f"ExecutionLimits.cpu_seconds must be positive, got {self.cpu_seconds!r}.")


@dataclass(frozen=True)
class Isolation:
    """What isolation a sample actually got."""

    network: bool  # a new, empty network namespace: no interface is up, not even loopback
    pids: bool  # a new PID namespace: every process the sample started is killed when it ends
    user: str | None  # the unprivileged user it ran as (None: the evaluator's own user)


@dataclass(frozen=True)
class ExecutionResult:
    """How one sample ended: `status` is "passed", "failed" or "timed out"; `detail` says why it failed."""

    status: str
    detail: str
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    isolation: Isolation | None
    seconds: float

    @property
    def passed(self) -> bool:
        """True when the program ran to its end without an exception within the limits."""
        return self.status == "passed"

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of the result."""
        return asdict(self) | {"passed": self.passed}


def _sample_user(limits: ExecutionLimits) -> tuple[int, int, str] | None:
    """The (uid, gid, name) to run as: `limits.user` when the evaluator is root, else None."""
    if limits.user is None or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(limits.user)
    except KeyError:
        raise ConfigError(f"ExecutionLimits.user {limits.user!r} is not a user on this machine.") from None
    return entry.pw_uid, entry.pw_gid, limits.user


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait until `pid` exits without reaping it (so its pid and process group stay ours); False on timeout."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)
    while time.monotonic() < deadline:  # no pidfd (old kernel, not Linux): poll
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.01)
    return False


def _kill_group(pgid: int) -> None:
    """SIGKILL a whole process group, which may already be gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(pgid: int) -> None:
    """Wait (a little) until no process of a killed group is left; SIGKILL takes effect asynchronously."""
    deadline = time.monotonic() + _GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def _read_reports(fd: int) -> dict:
    """Everything the runner reported on its pipe, merged into one dict."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    merged = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        try:
            merged |= json.loads(line)
        except (json.JSONDecodeError, TypeError):
            pass
    return merged


def _read_output(file, limit: int) -> str:
    """The first `limit` bytes a captured stream received, decoded."""
    file.seek(0)
    data = file.read(limit + 1)
    text = data[:limit].decode(errors="replace")
    return text + "\n[output truncated]" if len(data) > limit else text


def _remove_tree(path: Path) -> None:
    """Delete a sample's directory even where the sample removed permissions from what it wrote."""

    def make_writable_and_retry(function, failed_path, _):
        os.chmod(os.path.dirname(failed_path), 0o700)
        os.chmod(failed_path, 0o700) if os.path.isdir(failed_path) else None
        function(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)


def _verdict(timed_out: bool, reports: dict, stderr: str, returncode: int) -> tuple[str, str]:
    """The (status, detail) of a finished sample."""
    if timed_out:
        return "timed out", "the wall-clock timeout expired; its process group was killed"
    if "signal" in reports:
        name = signal.Signals(reports["signal"]).name if reports["signal"] in signal.valid_signals() else "?"
        return "failed", f"killed by signal {reports['signal']} ({name}): a CPU, file-size or memory limit"
    if "exit" not in reports:
        return "failed", f"the runner ended without a report (exit code {returncode})"
    if reports["exit"] == 0:
        return "passed", ""
    last = [line for line in stderr.splitlines() if line.strip()]
    return "failed", last[-1] if last else f"exit code {reports['exit']}"


def run_program(source: str, limits: ExecutionLimits | None = None, *, tmp_root: str | Path | None = None
                ) -> ExecutionResult:
    """Run Python `source` in a fresh confined process and directory; passed when it ends without an exception."""
    if os.name != "posix":
        raise ConfigError("Executing generated code needs a POSIX system (Linux or macOS); this one is not.")
    limits = limits or ExecutionLimits()
    user = _sample_user(limits)
    outer = Path(tempfile.mkdtemp(prefix="llmlab-exec-", dir=tmp_root))  # mode 0700: the sample cannot reach it
    try:
        workdir = outer / "work"
        workdir.mkdir(mode=0o700)
        if user is not None:
            os.chown(workdir, user[0], user[1])
        (outer / "program.py").write_text(source)
        config = {
            "program": str(outer / "program.py"),
            "workdir": str(workdir),
            "namespaces": limits.namespaces,
            "uid": None if user is None else user[0],
            "gid": None if user is None else user[1],
            "limits": {
                "cpu_seconds": limits.cpu_seconds or math.ceil(limits.timeout),
                "memory_bytes": limits.memory_bytes,
                "file_size_bytes": limits.file_size_bytes,
                "max_processes": limits.max_processes,
                "max_open_files": limits.max_open_files,
                "nice": limits.nice,
            },
        }
        (outer / "config.json").write_text(json.dumps(config))
        return _run_runner(outer, limits, user)
    finally:
        _remove_tree(outer)


def _run_runner(outer: Path, limits: ExecutionLimits, user: tuple[int, int, str] | None) -> ExecutionResult:
    """Start the runner on a prepared directory, wait for it within the timeout and collect the result."""
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile(dir=outer) as out, tempfile.TemporaryFile(dir=outer) as err:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", str(_RUNNER), str(outer / "config.json"), str(write_fd)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(write_fd,), cwd=outer, env=_ENV,
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        timed_out = not _wait_unreaped(proc.pid, limits.timeout)
        if timed_out:  # the runner kills the sample and waits until its PID namespace is gone
            os.kill(proc.pid, signal.SIGTERM)
            _wait_unreaped(proc.pid, _GRACE_SECONDS)
        _kill_group(proc.pid)  # on time or not: whatever the sample left behind in its group goes too
        returncode = proc.wait()
        _wait_group_gone(proc.pid)
        seconds = time.monotonic() - start
        reports = _read_reports(read_fd)
        stdout, stderr = _read_output(out, limits.max_output_bytes), _read_output(err, limits.max_output_bytes)
    isolation = reports.get("isolation")
    if isolation is not None:
        isolation = Isolation(network=isolation["network"], pids=isolation["pids"], user=user and user[2])
    status, detail = _verdict(timed_out, reports, stderr, returncode)
    return ExecutionResult(status=status, detail=detail, exit_code=reports.get("exit"), signal=reports.get("signal"),
                           stdout=stdout, stderr=stderr, isolation=isolation, seconds=seconds)


def run_programs(sources: Sequence[str], limits: ExecutionLimits | None = None, *, workers: int | None = None,
                 progress: bool = True, tmp_root: str | Path | None = None) -> list[ExecutionResult]:
    """Run many programs, at most `workers` at a time (default: the CPU count), with a progress bar; in order."""
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}.")
    results: list[ExecutionResult | None] = [None] * len(sources)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait: each sample is its own process
        futures = {pool.submit(run_program, source, limits, tmp_root=tmp_root): i for i, source in enumerate(sources)}
        for future in tqdm(as_completed(futures), total=len(futures), desc="executing", disable=not progress):
            results[futures[future]] = future.result()
    return results


def read_problems(path: str | Path) -> dict[str, dict]:
    """Read HumanEval-format problems (JSONL, optionally gzipped) into a dict by task_id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"HumanEval problem file {path} does not exist.")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                problem = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"Line {number} of {path} is not valid JSON.") from None
            missing = [key for key in HUMANEVAL_KEYS if key not in problem]
            if missing:
                raise DataError(f"Line {number} of {path} lacks the field(s) {', '.join(missing)}.")
            problems[problem["task_id"]] = problem
    return problems


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval runs: prompt + completion, the tests, then check(entry_point)."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def check_correctness(problem: dict, completion: str, limits: ExecutionLimits | None = None, **kwargs
                      ) -> ExecutionResult:
    """Run one completion of one HumanEval problem against its tests."""
    return run_program(humaneval_program(problem, completion), limits, **kwargs)


def evaluate_samples(problems: dict[str, dict], samples: Iterable[dict], limits: ExecutionLimits | None = None,
                     **kwargs) -> list[ExecutionResult]:
    """Run samples ({"task_id", "completion"}) against their problems in parallel; results in the samples' order."""
    programs = []
    for i, sample in enumerate(samples):
        task_id = sample.get("task_id")
        if task_id not in problems:
            raise DataError(f"Sample {i} has task_id {task_id!r}, which is not among the problems.")
        if not isinstance(sample.get("completion"), str):
            raise DataError(f"Sample {i} ({task_id}) has no string field 'completion'.")
        programs.append(humaneval_program(problems[task_id], sample["completion"]))
    return run_programs(programs, limits, **kwargs)


def humaneval_pass_at_k(samples: Sequence[dict], results: Sequence[ExecutionResult], ks: Iterable[int] = (1, 10, 100)
                        ) -> dict[str, Aggregate]:
    """pass@k over tasks from samples and their results, for each k that every task has samples enough for."""
    if len(samples) != len(results):
        raise ConfigError(f"Got {len(samples)} samples but {len(results)} results.")
    counts: dict[str, list[int]] = {}
    for sample, result in zip(samples, results):
        n_c = counts.setdefault(sample["task_id"], [0, 0])
        n_c[0] += 1
        n_c[1] += result.passed
    n, c = zip(*counts.values()) if counts else ((), ())
    return {f"pass@{k}": mean_pass_at_k(n, c, k) for k in ks if n and min(n) >= k}

"""llmlab's own CPU kernels: C++ sources in llmlab/infer/kernels, compiled for this machine on first use and cached.

A kernel is built once per machine, source and torch release, with the C++ compiler PyTorch's extensions use ($CXX,
else c++) against the headers and OpenMP runtime of the torch in this process, and kept under
$LLMLAB_CACHE_DIR/kernels (default ~/.cache/llmlab/kernels): a build writes a temporary file and renames it into place,
under a file lock, so concurrent processes build it once. Where there is no compiler, or the build fails, or
LLMLAB_NATIVE=0, ``load`` returns False with the reason in ``unavailable_reason`` and callers keep PyTorch's kernels.

    if native.load("blocked_linear"):
        torch.ops.llmlab.blocked_linear(x, blocked, bias, out_features)
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

SOURCES = Path(__file__).parent / "kernels"
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-std=c++20", "-shared", "-fPIC", "-w"]

_loaded: dict[str, bool] = {}
_reasons: dict[str, str] = {}
_lock = threading.Lock()


def cache_dir() -> Path:
    """Where built kernels are kept: $LLMLAB_CACHE_DIR/kernels, else ~/.cache/llmlab/kernels."""
    root = os.environ.get("LLMLAB_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmlab"
    return Path(root) / "kernels"


def load(name: str) -> bool:
    """Build (once per machine) and load the kernel kernels/<name>.cpp into torch.ops.llmlab; whether it is there."""
    loaded = _loaded.get(name)
    if loaded is not None:  # every forward call asks
        return loaded
    with _lock:
        if name not in _loaded:
            try:
                torch.ops.load_library(str(_build(name)))
                _loaded[name] = True
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                _loaded[name], _reasons[name] = False, " ".join(str(error).split()) or repr(error)
        return _loaded[name]


def unavailable_reason(name: str) -> str | None:
    """Why load(name) returned False, in one line; None if it loaded or was not tried."""
    return _reasons.get(name)


def _build(name: str) -> Path:
    """The path of kernels/<name>.cpp built for this machine, compiling it if no build is cached."""
    if os.environ.get("LLMLAB_NATIVE", "1") == "0":
        raise RuntimeError("llmlab's native kernels are turned off (LLMLAB_NATIVE=0)")
    if sys.platform != "linux":
        raise RuntimeError(f"llmlab builds its native kernels on Linux only, not on {sys.platform}")
    import fcntl
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler}) to build llmlab's {name} kernel")
    source = SOURCES / f"{name}.cpp"
    command = [compiler, *FLAGS, str(source), *_torch_flags()]  # the libraries after the source that needs them
    key = hashlib.sha256("\0".join([source.read_text(), torch.__version__, *command, _compiler_version(compiler),
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    directory = cache_dir()
    built = directory / f"{name}-{key}.so"
    if built.exists():
        return built
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then take its build
        if not built.exists():
            if sys.stderr.isatty():  # a first use waits about ten seconds here
                print(f"llmlab: building its {name} kernel for this CPU (once)...", file=sys.stderr, flush=True)
            descriptor, temporary = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=directory)
            os.close(descriptor)
            try:
                done = subprocess.run([*command, "-o", temporary], capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    lines = done.stderr.strip().splitlines() or ["no message"]
                    first_error = next((line for line in lines if "error" in line), lines[-1])
                    raise RuntimeError(f"{compiler} could not build llmlab's {name} kernel: {first_error}")
                os.replace(temporary, built)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
    return built


def _torch_flags() -> list[str]:
    """Include and link flags for the torch in this process (its headers, c10 and torch_cpu, its C++ ABI)."""
    root = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            f"-L{root / 'lib'}", "-lc10", "-ltorch_cpu", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]


def _compiler_version(compiler: str) -> str:
    """The compiler's --version line (part of a build's cache key)."""
    done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.splitlines()[0] if done.stdout else ""


def _cpu_flags() -> str:
    """This CPU's model and feature flags (part of a build's cache key: -march=native builds for this CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted)) or platform.machine()

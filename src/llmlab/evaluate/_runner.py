"""Runs one untrusted program under limits; started by llmlab.evaluate.execution as `python -I _runner.py CONFIG FD`.

It uses the standard library only and imports nothing from llmlab, so that it starts fast and alone. Reports go to
file descriptor FD as JSON lines: first the isolation obtained, then the program's exit code or signal.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import traceback

CLONE_NEWUSER = 0x10000000  # <linux/sched.h>
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _libc():
    """The C library, or None where ctypes cannot load it."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _unshare(flags):
    """Move this process into new namespaces of `flags`; True when the kernel allowed it."""
    if hasattr(os, "unshare"):  # Python 3.12+
        try:
            os.unshare(flags)
            return True
        except OSError:
            return False
    libc = _libc()
    return libc is not None and hasattr(libc, "unshare") and libc.unshare(flags) == 0


def _isolate(config):
    """Enter new network and PID namespaces where the platform permits; return what was obtained."""
    if not config["namespaces"] or not sys.platform.startswith("linux"):
        return {"network": False, "pids": False}
    # As root the namespaces need no user namespace; otherwise an unprivileged user namespace may allow them.
    for flags in (CLONE_NEWNET | CLONE_NEWPID, CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWUSER, CLONE_NEWNET,
                  CLONE_NEWNET | CLONE_NEWUSER):
        if _unshare(flags):
            return {"network": True, "pids": bool(flags & CLONE_NEWPID)}
    return {"network": False, "pids": False}


def _report(fd, message):
    """Write one JSON line to the evaluator."""
    os.write(fd, (json.dumps(message) + "\n").encode())


def _set_limit(name, soft, hard=None):
    """Lower one resource limit, never above the current hard limit; skip limits the platform lacks."""
    which = getattr(resource, name, None)
    if which is None:
        return
    current_hard = resource.getrlimit(which)[1]
    hard = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    try:
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):
        pass


def _confine(config):
    """In the sample's process: limits, lower priority, the working directory, then the unprivileged user."""
    limits = config["limits"]
    _set_limit("RLIMIT_CPU", limits["cpu_seconds"], limits["cpu_seconds"] + 1)  # SIGXCPU, then SIGKILL
    _set_limit("RLIMIT_AS", limits["memory_bytes"])
    _set_limit("RLIMIT_DATA", limits["memory_bytes"])
    _set_limit("RLIMIT_FSIZE", limits["file_size_bytes"])
    _set_limit("RLIMIT_NPROC", limits["max_processes"])
    _set_limit("RLIMIT_NOFILE", limits["max_open_files"])
    _set_limit("RLIMIT_CORE", 0)
    os.nice(limits["nice"])
    os.chdir(config["workdir"])
    if config["uid"] is not None:
        held = {entry: os.open(entry, os.O_RDONLY | os.O_DIRECTORY) for entry in sys.path if os.path.isdir(entry)}
        os.setgroups([])
        os.setgid(config["gid"])
        os.setuid(config["uid"])
        _reach_import_path(held)


def _reach_import_path(held):
    """Keep the interpreter's modules importable after the drop to an unprivileged user.

    An interpreter under a private home (pyenv in /root) has its standard library where `nobody` cannot pass; a
    directory opened before the drop stays reachable through /proc/self/fd/N, which skips the ancestors' checks.
    """
    for i, entry in enumerate(sys.path):
        if entry in held and not os.access(entry, os.R_OK | os.X_OK):
            sys.path[i] = f"/proc/self/fd/{held.pop(entry)}"
    for fd in held.values():
        os.close(fd)
    sys.path_importer_cache.clear()


def _run_sample(source, config, fd):
    """Fork the process that runs the untrusted source; return its pid."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _confine(config)
        code = compile(source, "sample.py", "exec")
        # Not "__main__", as in human-eval's exec: a sample's `if __name__ == "__main__":` block does not run.
        exec(code, {"__name__": "__sample__", "__builtins__": __builtins__})
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: B036 - the sample's SystemExit and KeyboardInterrupt are failures too
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(1)
    os._exit(0)


def _wait(pid):
    """Wait for a process; return its exit code or the signal that ended it."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit": os.WEXITSTATUS(status)}


def _on_terminate(init):
    """The evaluator's SIGTERM on timeout: end the sample and everything it started, then exit."""

    def handler(signum, frame):
        if init is None:
            os.killpg(0, signal.SIGKILL)  # no PID namespace: the process group is all there is to kill
        else:
            os.kill(init, signal.SIGKILL)  # the namespace's end waits until every process in it is gone

    signal.signal(signal.SIGTERM, handler)


def main():
    """Read the configuration, isolate, run the sample and report how it ended."""
    _on_terminate(None)
    with open(sys.argv[1]) as f:
        config = json.load(f)
    with open(config["program"]) as f:
        source = f.read()
    fd = int(sys.argv[2])
    isolation = _isolate(config)
    _report(fd, {"isolation": isolation})
    if not isolation["pids"]:
        _report(fd, _wait(_run_sample(source, config, fd)))
        return
    init = os.fork()  # pid 1 of the new PID namespace: when it exits the kernel kills every process left in it
    if init == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        libc = _libc()
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the evaluator killing this runner ends the namespace
        _report(fd, _wait(_run_sample(source, config, fd)))
        os._exit(0)
    _on_terminate(init)
    os.waitpid(init, 0)


if __name__ == "__main__":
    main()

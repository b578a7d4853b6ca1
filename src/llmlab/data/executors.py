"""Where the data pipeline's tasks run: `LocalExecutor` (spawned worker processes on this machine, the default) or
`RayExecutor` (tasks on a Ray cluster, `llmlab data run --executor ray [--address ADDR]`).

A task is a module-level function of one picklable job that writes its outputs itself (atomically, its done marker
last) and returns a small dict; an executor only runs tasks, in any order, and says how many workers it had.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from llmlab.errors import ConfigError, LlmlabError

EXECUTORS = ("local", "ray")
TASK_RETRIES = 3  # Ray reruns a task whose worker process died this many times


def _watch_parent(parent: int) -> None:
    """Worker initializer: exit when the parent dies (killed), rather than linger as an orphan."""
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


class LocalExecutor:
    """Spawned worker processes (none when workers is 1), started at their first use and shared by the phases."""

    name = "local"

    def __init__(self, workers: int = 1):
        self.workers, self.pool = workers, None

    def map(self, function: Callable, jobs: Sequence) -> Iterator[dict]:
        """FUNCTION's result for every job, in any order."""
        if self.workers == 1 or len(jobs) <= 1:
            return map(function, jobs)
        if self.pool is None:
            context = multiprocessing.get_context("spawn")  # fork is unsafe with threads (tokenizers, torch)
            self.pool = context.Pool(self.workers, initializer=_watch_parent, initargs=(os.getpid(),))
        return self.pool.imap_unordered(function, jobs)

    def close(self) -> None:
        """Stop the worker processes (at the end every job is done; after an error the others are abandoned)."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


class RayExecutor:
    """Tasks on a Ray cluster (ADDRESS, or a local instance of WORKERS CPUs started here), at most WORKERS at once."""

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray (pip install 'llmlab[scale]').") from None
        self.ray, self.workers, self.started = ray, workers, False
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = f"at {address}" if address else "on this machine"
                raise ConfigError(f"a Ray cluster could not be reached {where} ({error}).") from None
            self.started = True
        self._remotes: dict[Callable, object] = {}

    def map(self, function: Callable, jobs: Sequence) -> Iterator[dict]:
        """FUNCTION's result for every job, in the order they finish; a worker that dies is replaced and its task
        rerun (the task's outputs are atomic, so a rerun writes the same bytes)."""
        ray = self.ray
        if function not in self._remotes:
            self._remotes[function] = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(function)
        remote, waiting, running = self._remotes[function], list(reversed(jobs)), []
        while waiting or running:
            while waiting and len(running) < self.workers:
                running.append(remote.remote(waiting.pop()))
            done, running = ray.wait(running, num_returns=1)
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, LlmlabError):  # the user's error, said as on one machine
                    raise error.cause from None
                raise

    def close(self) -> None:
        """Disconnect from the cluster (a local instance started here stops)."""
        if self.started:
            self.ray.shutdown()


def make_executor(name: str = "local", workers: int = 1, address: str | None = None):
    """The executor NAME (local or ray) with WORKERS workers; ADDRESS joins an existing Ray cluster."""
    if name not in EXECUTORS:
        raise ConfigError(f"the executor must be one of {', '.join(EXECUTORS)}, not {name!r}.")
    if name == "local":
        if address is not None:
            raise ConfigError("--address names a Ray cluster; use it with --executor ray.")
        return LocalExecutor(workers)
    return RayExecutor(workers, address)

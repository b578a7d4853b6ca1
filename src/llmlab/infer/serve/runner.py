"""Running a request's prompts on the AsyncEngine: each prompt one engine request, all started together (so that a
refusal, such as a full queue, comes before any answer is sent), their outputs merged as they come, and every one
aborted when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmlab.infer.serve.params import Submission

_END = object()


async def _close(streams) -> None:
    """Close async generators (the engine aborts their requests), ignoring the ones already closed or failed."""
    for stream in streams:
        try:
            await stream.aclose()
        except (Exception, asyncio.CancelledError):
            pass


async def _cancelled(tasks) -> None:
    """Cancel tasks and wait until they are done."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Run:
    """The engine requests of one submission: started, then read as (prompt index, cumulative RequestOutput)."""

    def __init__(self, engine, submission: Submission, request_id: str):
        self.submission = submission
        self.streams = [engine.generate(prompt, submission.config, request_id=f"{request_id}-{index}",
                                        prompt_logprobs=submission.prompt_logprobs,
                                        max_new_tokens=submission.max_new_tokens)
                        for index, prompt in enumerate(submission.prompts)]
        self.firsts: list = []

    async def start(self) -> None:
        """Wait for every prompt's first output; when one is refused, abort the others and raise its error."""
        tasks = [asyncio.ensure_future(anext(stream)) for stream in self.streams]
        try:
            self.firsts = list(await asyncio.gather(*tasks))
        except BaseException:
            await _cancelled(tasks)
            await _close(self.streams)
            raise

    async def outputs(self) -> AsyncIterator[tuple[int, object]]:
        """Every output of every prompt as it comes, the first ones included; leaving early aborts the rest."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, stream) -> None:
            try:
                async for output in stream:
                    await queue.put((index, output))
                await queue.put((index, _END))
            except Exception as error:  # a bug in the engine: handed on to the response
                await queue.put((index, error))

        for index, first in enumerate(self.firsts):
            yield index, first
        tasks = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(self.streams)]
        try:
            for _ in range(len(tasks)):
                while True:
                    index, item = await queue.get()
                    if item is _END:
                        break
                    if isinstance(item, Exception):
                        raise item
                    yield index, item
        finally:
            await _cancelled(tasks)
            await _close(self.streams)

    async def finals(self) -> list:
        """The last output of every prompt."""
        last = list(self.firsts)
        async for index, output in self.outputs():
            last[index] = output
        return last


async def until_disconnected(request) -> None:
    """Return when the client of request has gone away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request, awaitable):
    """The result of awaitable, or None (with it cancelled, aborting its engine requests) when the client leaves
    first."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _cancelled([watcher] + ([task] if not task.done() else []))
    return task.result() if not task.cancelled() else None

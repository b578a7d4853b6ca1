"""A test double of llmlab.infer.engine's AsyncEngine, for the HTTP layer's tests only: each request is answered by
llmlab.infer.generate on its own and replayed one token per step, in the engine's RequestOutput shapes."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import torch

from llmlab.infer.engine import EngineFullError, EngineStats, PromptLogprob, RequestOutput, SequenceOutput
from llmlab.infer.generate import decoded_text, generate


@dataclass
class FakeEngine:
    model: object
    tokenizer: object
    counters: EngineStats = field(default_factory=lambda: EngineStats(0, 0, 0, 64, 0, 0, 0, 0))

    def stats(self) -> EngineStats:
        return self.counters


def compute_prompt_logprobs(model, ids: list[int], k: int) -> list[PromptLogprob | None]:
    """Each prompt token's log-probability after its prefix, with the top k (the first token has none)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    entries: list = [None]
    for position in range(1, len(ids)):
        row = logits[position - 1]
        values, tokens = row.topk(k) if k else (row[:0], row[:0].long())
        entries.append(PromptLogprob(float(row[ids[position]]), dict(zip(tokens.tolist(), values.tolist()))))
    return entries


class FakeAsyncEngine:
    """generate() per request, replayed a token per step (step_seconds apart); records started and aborted ids."""

    def __init__(self, model, tokenizer, step_seconds: float = 0.0):
        self.engine = FakeEngine(model, tokenizer)
        self.step_seconds = step_seconds
        self.full = False  # set by a test: every request is refused as by a full queue
        self.started, self.aborted, self.finished, self.configs, self.prompts = [], [], [], [], []
        self.running = False
        self.ids = itertools.count()

    async def start(self) -> None:
        self.running = True

    async def shutdown(self, drain: bool = True) -> None:
        self.running = False

    async def generate(self, prompt_ids, config, request_id=None, prompt_logprobs=None, max_new_tokens=None):
        if self.full:
            raise EngineFullError("The engine's queue is full (4 requests are waiting); try again shortly.")
        request_id = request_id or str(next(self.ids))
        self.started.append(request_id)
        self.configs.append(config)
        self.prompts.append(list(prompt_ids))
        model, tokenizer = self.engine.model, self.engine.tokenizer
        arrival = time.monotonic()
        steps = config.max_new_tokens if max_new_tokens is None else max_new_tokens
        prompt_entries = (None if prompt_logprobs is None
                          else compute_prompt_logprobs(model, prompt_ids, prompt_logprobs))
        if steps:
            result = generate(model, [prompt_ids], config.replace(max_new_tokens=steps), tokenizer=tokenizer)
            sequences = list(zip(result.tokens, result.finish_reasons))
        else:
            result, sequences = None, [([], "length")] * config.n
        longest = max(len(tokens) for tokens, _ in sequences)
        first_token, texts = None, [""] * len(sequences)
        try:
            for step in range(1, max(1, longest) + 1):
                await asyncio.sleep(self.step_seconds)
                first_token = first_token or time.monotonic()
                outputs = []
                for index, (tokens, reason) in enumerate(sequences):
                    done = step >= len(tokens)
                    text = decoded_text(tokenizer, tokens[:step], config)
                    if text.endswith("\ufffd") and not done:  # as the engine: whole characters only
                        text = texts[index]
                    texts[index] = text
                    outputs.append(SequenceOutput(
                        index, tokens[:step], text,
                        None if config.logprobs is None else result.logprobs[index][:step] if result else [],
                        None if config.logprobs is None else result.top_logprobs[index][:step] if result else [],
                        reason if done else None))
                finished = all(output.finish_reason is not None for output in outputs)
                self.engine.counters.generated_tokens += len(sequences)
                yield RequestOutput(request_id, list(prompt_ids), prompt_entries, outputs, finished, arrival,
                                    first_token, time.monotonic() if finished else None)
            self.finished.append(request_id)
        except (GeneratorExit, asyncio.CancelledError):
            self.aborted.append(request_id)
            raise

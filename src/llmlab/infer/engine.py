"""The serving engine (survey §6): continuous batching (Yu et al. 2022, Orca) over a paged key/value cache (Kwon et
al. 2023, vLLM), with chunked prefill, prefix caching and preemption by recomputation.

Requests enter a queue. Each step the scheduler keeps the running sequences going (one token each, or the next chunk
of a prompt), admits waiting ones while the token budget, the sequence limit and the pool's blocks allow, runs the
model once for all one-token rows and once per prompt chunk, chooses each row's token with its own options, and
retires finished sequences at once. When blocks run out the newest sequences are preempted (their blocks freed) and
later recomputed from their tokens so far; nothing is lost. Full blocks are registered under a hash of their tokens
and of everything before them, so a later prompt with the same beginning reuses them.

    engine = Engine(model)
    engine.add_request(prompt_ids, GenerationConfig(max_new_tokens=32))
    while engine.has_unfinished():
        for output in engine.step():
            print(output.outputs[0].text)

AsyncEngine runs the same loop in a background thread for asyncio servers.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from llmlab.errors import ConfigError, LlmlabError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.detokenize import IncrementalDecoder
from llmlab.infer.generate import BlankTokens, resolve_config
from llmlab.infer.paged import PagedCache
from llmlab.infer.sampling import TokenCounts, choose_tokens, process_logits
from llmlab.infer.stopping import StopStrings

DEFAULT_KV_CACHE_MEMORY = 2 << 30  # bytes of keys and values when neither kv_cache_tokens nor a GPU says otherwise


class EngineFullError(LlmlabError):
    """The engine's queue of waiting requests is full, or it is shutting down; the request may be retried later."""


@dataclass
class PromptLogprob:
    """A prompt token's log-probability after the tokens before it, and the most likely alternatives there."""

    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass
class SequenceOutput:
    """One of a request's n samples so far."""

    index: int
    token_ids: list[int]
    text: str  # complete characters decoded so far, cut at a stop string unless include_stop_str_in_output
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None  # "stop", "length" or "abort" once finished


@dataclass
class RequestOutput:
    """A request's state after a step: its samples so far, and the prompt's log-probabilities when asked for."""

    request_id: str
    prompt_token_ids: list[int]
    prompt_logprobs: list[PromptLogprob | None] | None
    outputs: list[SequenceOutput]
    finished: bool
    arrival_time: float
    first_token_time: float | None = None
    finish_time: float | None = None


@dataclass
class EngineStats:
    """Counters for a server's metrics."""

    waiting: int
    running: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_cache_queries: int  # full prompt blocks looked up
    prefix_cache_hits: int  # of which were found
    generated_tokens: int
    preemptions: int


class _Request:
    def __init__(self, request_id: str, prompt: list[int], inputs: list[int], config: GenerationConfig,
                 max_new_tokens: int, prompt_logprobs: int | None, blank_position: int | None, tokenizer):
        self.id, self.prompt, self.inputs, self.config = request_id, prompt, inputs, config
        self.max_new_tokens, self.prompt_logprobs_k = max_new_tokens, prompt_logprobs
        self.prompt_logprobs: list[PromptLogprob | None] | None = None if prompt_logprobs is None else [None]
        self.blank_position = blank_position  # GLM: where the mask token sits
        self.memory: torch.Tensor | None = None  # encoder-decoders: the encoder's output [source, d_model]
        self.arrival_time = time.monotonic()
        self.first_token_time = self.finish_time = None
        self.sequences = [_Sequence(self, index, tokenizer) for index in range(config.n)]
        self.forked = config.n == 1  # samples 1.. join once sample 0 has prefilled the prompt

    @property
    def finished(self) -> bool:
        return all(sequence.finish_reason is not None for sequence in self.sequences)

    def output(self) -> RequestOutput:
        outputs = [sequence.output() for sequence in self.sequences]
        return RequestOutput(self.id, list(self.prompt), None if self.prompt_logprobs is None else
                             list(self.prompt_logprobs), outputs, self.finished, self.arrival_time,
                             self.first_token_time, self.finish_time)


class _Sequence:
    """One sample: its new tokens, how many of its tokens the cache holds, its token choice and its text."""

    def __init__(self, request: _Request, index: int, tokenizer):
        config = request.config
        self.request, self.index, self.id = request, index, (request.id, index)
        self.tokens: list[int] = []
        self.cached = 0  # of inputs + tokens, how many the cache holds
        self.keys: list[bytes] = []  # the prefix-cache keys of its full blocks, in order
        self.finish_reason: str | None = None
        self.counts: TokenCounts | None = None
        self.generator: torch.Generator | None = None
        seed = None if config.seed is None else config.seed + index  # as generate seeds sample j of a prompt
        if config.do_sample:
            seed = seed if seed is not None else int(torch.randint(2**62, ()))
            self.generator = torch.Generator("cpu").manual_seed(seed)  # re-made on the model's device when used
        self.logprobs: list[float] | None = None if config.logprobs is None else []
        self.top_logprobs: list[dict[int, float]] | None = None if config.logprobs is None else []
        self.text = ""
        self.decoder = None if tokenizer is None else IncrementalDecoder(tokenizer, context=request.prompt[-5:])
        self.stops = StopStrings(config.stop, config.include_stop_str_in_output)

    @property
    def all_tokens(self) -> list[int]:
        return self.request.inputs + self.tokens

    @property
    def pending(self) -> int:
        """Tokens to feed the model before the next one can be chosen."""
        return len(self.request.inputs) + len(self.tokens) - self.cached

    def output(self) -> SequenceOutput:
        return SequenceOutput(self.index, list(self.tokens), self.text, None if self.logprobs is None else
                              list(self.logprobs), None if self.top_logprobs is None else list(self.top_logprobs),
                              self.finish_reason)


def _block_key(previous: bytes, tokens: Sequence[int]) -> bytes:
    """The prefix-cache key of a block: a hash of its tokens and of the key of the block before it."""
    return hashlib.blake2b(previous + array("q", tokens).tobytes(), digest_size=16).digest()


def _plain_greedy(config: GenerationConfig) -> bool:
    """Whether the token is simply the argmax of the logits (no penalty, blocking, minimum length or logprobs)."""
    return (not config.do_sample and config.repetition_penalty == 1.0 and not config.presence_penalty
            and not config.frequency_penalty and not config.no_repeat_ngram_size and not config.min_new_tokens
            and config.logprobs is None)


class Engine:
    """Continuous batching over a PagedCache: add_request, then step until has_unfinished is False."""

    def __init__(self, model, tokenizer=None, *, max_num_seqs: int = 64, max_model_len: int | None = None,
                 kv_cache_tokens: int | None = None, kv_cache_memory: int | None = None, block_size: int = 16,
                 max_num_batched_tokens: int = 512, prefix_caching: bool = True, max_waiting: int | None = None,
                 blank_tokens: BlankTokens | None = None):
        """kv_cache_tokens (or kv_cache_memory, in bytes) sizes the block pool; max_num_batched_tokens is the
        tokens of one step (prompt chunks and one-token rows together); max_waiting bounds the queue."""
        config = model.config
        if config.arch == "encoder":
            raise ConfigError("An encoder-only model cannot generate text; it gives logits or hidden states for a "
                              "text.")
        self.model, self.config = model, config
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        self.blank_tokens = blank_tokens
        if config.position == "glm2d" and blank_tokens is None:
            self.blank_tokens = BlankTokens.from_tokenizer(self.tokenizer)
        for name, value in (("max_num_seqs", max_num_seqs), ("block_size", block_size),
                            ("max_num_batched_tokens", max_num_batched_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"Engine {name} must be a positive integer, not {value!r}.")
        self.max_model_len = min(max_model_len or config.max_seq_len, config.max_seq_len)
        if self.max_model_len < 2:
            raise ConfigError(f"Engine max_model_len must be at least 2 tokens, not {max_model_len}.")
        self.max_num_seqs, self.max_waiting = max_num_seqs, max_waiting
        self.max_num_batched_tokens = max(max_num_batched_tokens, max_num_seqs)
        # a prefix decoder's prompt (and GLM's part A) is bidirectional: it is prefilled whole, and what its blocks hold
        # depends on all of it, so neither chunking nor sharing a prefix is valid; an encoder-decoder's decoder prompt
        # is its start token, whose keys depend on the source
        self.chunked = config.arch == "decoder"
        self.prefix_caching = prefix_caching and config.arch == "decoder"
        layers = config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers
        dtype = next(model.parameters()).dtype
        token_bytes = layers * 2 * config.kv_heads * config.dim_head * dtype.itemsize
        if kv_cache_tokens is None:
            memory = kv_cache_memory or self._default_kv_memory()
            kv_cache_tokens = min(memory // token_bytes, max_num_seqs * self.max_model_len)
        if not isinstance(kv_cache_tokens, int) or kv_cache_tokens < self.max_model_len:
            raise ConfigError(f"The KV cache must hold at least one sequence of max_model_len {self.max_model_len} "
                              f"tokens, not {kv_cache_tokens} tokens (raise kv_cache_tokens or kv_cache_memory, or "
                              f"lower max_model_len).")
        self.cache = PagedCache.for_model(model, -(-kv_cache_tokens // block_size), block_size)
        self.block_size = block_size
        self.waiting: deque[_Sequence] = deque()  # sequences to (re)start, the first in line first
        self.running: list[_Sequence] = []  # in admission order: the newest are preempted first
        self.requests: dict[str, _Request] = {}
        self._arrivals: deque[_Request] = deque()  # added from any thread, taken in by step()
        self._aborts: deque[str] = deque()
        self._ids = itertools.count()
        self._arrival_lock = threading.Lock()  # request ids and the arrivals queue, shared with add_request
        self._prefix_queries = self._prefix_hits = self._generated = self._preemptions = 0
        self._stats = self._count()

    def _default_kv_memory(self) -> int:
        device = self.model.device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free * 0.8)
        return DEFAULT_KV_CACHE_MEMORY

    # --- requests ------------------------------------------------------------------------------------------------

    def add_request(self, prompt_ids: Sequence[int], config: GenerationConfig | None = None, *,
                    request_id: str | None = None, prompt_logprobs: int | None = None,
                    max_new_tokens: int | None = None) -> str:
        """Queue a prompt (token ids) to be continued as config says; returns its request id. Safe to call from
        another thread than the one stepping.

        prompt_logprobs=k also scores every prompt token after the ones before it (the first gets None), with the k
        most likely alternatives; max_new_tokens overrides config's and may be 0 (score the prompt only)."""
        config = resolve_config(self.model, config, {})
        if config.num_beams > 1:
            raise ConfigError("The engine does not run beam search; use llmlab.infer.generate with num_beams.")
        if config.n > self.max_num_seqs:
            raise ConfigError(f"n={config.n} samples exceed the engine's max_num_seqs of {self.max_num_seqs}.")
        max_new = config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 0:
            raise ConfigError(f"max_new_tokens must be an integer of at least 0, not {max_new!r}.")
        if prompt_logprobs is not None and (not isinstance(prompt_logprobs, int) or prompt_logprobs < 0):
            raise ConfigError(f"prompt_logprobs must be None or an integer of at least 0, not {prompt_logprobs!r}.")
        if prompt_logprobs is not None and self.config.arch == "encoder_decoder":
            raise ConfigError("An encoder-decoder does not score its prompt (the encoder input); ask for no "
                              "prompt_logprobs.")
        if config.stop and self.tokenizer is None:
            raise ConfigError("Stop strings need a tokenizer to decode the new tokens; give the engine one.")
        prompt = self._check_prompt(prompt_ids)
        inputs, blank, config = self._decoder_inputs(prompt, config)
        total = len(inputs) + max_new
        if total > self.max_model_len:
            raise ConfigError(f"The prompt's {len(inputs)} tokens and max_new_tokens={max_new} make {total}, more "
                              f"than the engine's context of {self.max_model_len} tokens (max_model_len).")
        with self._arrival_lock:
            if self.max_waiting is not None and len(self.waiting) + len(self._arrivals) >= self.max_waiting:
                raise EngineFullError(f"The engine's queue is full ({self.max_waiting} waiting requests); retry later.")
            request_id = f"request-{next(self._ids)}" if request_id is None else str(request_id)
            if request_id in self.requests or any(r.id == request_id for r in self._arrivals):
                raise ConfigError(f"Request id {request_id!r} is already in the engine.")
            request = _Request(request_id, prompt, inputs, config, max_new, prompt_logprobs, blank, self.tokenizer)
            self._arrivals.append(request)
        return request_id

    def _check_prompt(self, prompt_ids) -> list[int]:
        if isinstance(prompt_ids, torch.Tensor):
            prompt_ids = prompt_ids.flatten().tolist()
        if isinstance(prompt_ids, str) or not isinstance(prompt_ids, Sequence):
            raise ConfigError(f"A prompt must be a list of token ids, not {type(prompt_ids).__name__}.")
        if not prompt_ids:
            raise ConfigError("The prompt is empty; give at least one token.")
        vocab = self.config.vocab_size
        for position, token in enumerate(prompt_ids):
            if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < vocab:
                raise ConfigError(f"Prompt token {position} is {token!r}, not a token id in 0..{vocab - 1}.")
        if self.config.arch == "encoder_decoder" and len(prompt_ids) > self.config.max_seq_len:
            raise ConfigError(f"The prompt has {len(prompt_ids)} tokens, more than the encoder's context of "
                              f"{self.config.max_seq_len}.")
        return list(prompt_ids)

    def _decoder_inputs(self, prompt: list[int], config: GenerationConfig
                        ) -> tuple[list[int], int | None, GenerationConfig]:
        """What the decoder is fed before the first new token: the prompt, [start] for an encoder-decoder, the prompt
        and [sop] for GLM blank infilling (with the mask token's position, and [eop] among the EOS ids)."""
        if self.config.arch == "encoder_decoder":
            start = self.config.decoder_start_token_id
            return [start if start is not None else (self.config.pad_token_id or 0)], None, config
        if self.config.position == "glm2d":
            (inputs,), (blank,) = self.blank_tokens.prompts([prompt])
            eos = tuple(dict.fromkeys((*config.eos_token_ids, self.blank_tokens.eop)))
            return inputs, blank, config.replace(eos_token_id=eos)
        return prompt, None, config

    def abort(self, request_id: str) -> None:
        """Cancel a request (from any thread): its sequences leave at the next step, finishing with "abort"."""
        self._aborts.append(request_id)

    def has_unfinished(self) -> bool:
        """Whether any request is queued, running or has an abort to report."""
        return bool(self.requests or self._arrivals)

    def stats(self) -> EngineStats:
        """Queue lengths, block use and the prefix cache's hit counts as of the last step (safe from any thread)."""
        return replace(self._stats, waiting=self._stats.waiting + len(self._arrivals))

    def _count(self) -> EngineStats:
        waiting = len({s.request.id for s in self.waiting})
        return EngineStats(waiting, len({s.request.id for s in self.running}),
                           self.cache.num_blocks - self.cache.num_free_blocks, self.cache.num_blocks,
                           self._prefix_queries, self._prefix_hits, self._generated, self._preemptions)

    # --- one step ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model, choose tokens and retire finished sequences; the outputs of every request this
        step changed (finished ones for the last time)."""
        touched: dict[str, _Request] = {}
        with self._arrival_lock:  # add_request iterates over the arrivals from another thread
            arrivals = list(self._arrivals)
            self._arrivals.clear()
        for request in arrivals:
            self.requests[request.id] = request
            self.waiting.append(request.sequences[0])
        while self._aborts:
            request = self.requests.get(self._aborts.popleft())
            if request is not None:
                self._finish_request(request, "abort")
                touched[request.id] = request
        plan = self._schedule()
        ones = {sequence.id: sequence for sequence, count in plan if sequence.pending == 1}
        ones = [ones[seq_id] for seq_id in self.cache.decode_order(list(ones))]  # least copying of gathered keys
        if ones:
            logits = self._forward(ones, 1)
            self._choose(ones, logits, touched)
        for sequence, count in plan:
            if sequence.pending > 1:
                finishes_prompt, scores_prompt = count == sequence.pending, self._wants_prompt_logprobs(sequence)
                logits = self._forward([sequence], count, all_positions=scores_prompt)
                if scores_prompt:
                    self._score_prompt(sequence, count, logits)
                    touched[sequence.request.id] = sequence.request
                    logits = logits[:, -1]
                if finishes_prompt:
                    self._choose([sequence], logits, touched)
        for request in touched.values():
            if request.finished:
                request.finish_time = request.finish_time or time.monotonic()
                self.requests.pop(request.id, None)
        self._stats = self._count()
        return [request.output() for request in touched.values()]

    def _wants_prompt_logprobs(self, sequence: _Sequence) -> bool:
        request = sequence.request
        return request.prompt_logprobs is not None and len(request.prompt_logprobs) < len(request.prompt)

    def _schedule(self) -> list[tuple[_Sequence, int]]:
        """This step's (sequence, tokens to feed): running sequences' next tokens first, then their prompt chunks,
        oldest first, preempting the newest unscheduled ones when blocks run out for a next token; then waiting
        sequences, while the token budget, max_num_seqs and the free blocks allow, unless something was preempted."""
        budget, reserved, plan, planned, preempted = self.max_num_batched_tokens, 0, [], set(), False
        running = [s for s in self.running if s.pending == 1] + [s for s in self.running if s.pending > 1]
        for sequence in running:
            if sequence not in self.running or budget == 0:
                continue
            count = self._chunk(sequence, budget, bool(plan))
            if count == 0:
                continue
            need = self.cache.blocks_needed(count, [sequence.id])
            while need > self.cache.num_free_blocks - reserved and (sequence.pending == 1 or not plan):
                victim = next((s for s in reversed(self.running) if s.id not in planned and s is not sequence), None)
                if victim is None:
                    break
                self._preempt(victim)
                preempted = True
            if need > self.cache.num_free_blocks - reserved:
                if sequence.pending == 1:
                    self._preempt(sequence)
                    preempted = True
                continue
            plan.append((sequence, count))
            planned.add(sequence.id)
            budget, reserved = budget - count, reserved + need
        while self.waiting and budget > 0 and not preempted:
            sequence = self.waiting[0]
            seats = 1 if sequence.request.forked else sequence.request.config.n
            if len(self.running) + seats > self.max_num_seqs:
                break
            self._start(sequence)
            count = self._chunk(sequence, budget, bool(plan))
            need = self.cache.blocks_needed(count, [sequence.id]) if count else 0
            if count == 0 or need > self.cache.num_free_blocks - reserved:
                self._unstart(sequence)
                break
            self.waiting.popleft()
            self.running.append(sequence)
            plan.append((sequence, count))
            budget, reserved = budget - count, reserved + need
        return plan

    def _chunk(self, sequence: _Sequence, budget: int, others: bool) -> int:
        """How many of its pending tokens a sequence feeds this step: up to the budget, or all of a prompt that
        cannot be chunked (alone in a step if it is over the budget)."""
        if self.chunked or sequence.pending <= budget:
            return min(sequence.pending, budget)
        return 0 if others else sequence.pending

    def _start(self, sequence: _Sequence) -> None:
        """Give a waiting sequence its place in the cache, starting from the longest cached prefix of its tokens
        (all but the last: that one's logits are needed)."""
        blocks, keys = [], []
        if self.prefix_caching and sequence.request.prompt_logprobs is None:
            tokens, size, key = sequence.all_tokens, self.block_size, b""
            for start in range(0, len(tokens) - 1 - size + 1, size):
                key = _block_key(key, tokens[start:start + size])
                block = self.cache.allocator.lookup(key)
                self._prefix_queries += 1
                if block is None:
                    break
                self._prefix_hits += 1
                blocks.append(block)
                keys.append(key)
        self.cache.add_sequence(sequence.id, blocks)
        sequence.cached, sequence.keys = len(blocks) * self.block_size, keys

    def _unstart(self, sequence: _Sequence) -> None:
        self.cache.free_sequence(sequence.id)
        sequence.cached, sequence.keys = 0, []

    def _preempt(self, sequence: _Sequence) -> None:
        """Free a running sequence's blocks and put it first in line, to be recomputed from its tokens so far."""
        self.running.remove(sequence)
        self._unstart(sequence)
        self.waiting.appendleft(sequence)
        self._preemptions += 1

    def _forward(self, sequences: list[_Sequence], count: int, all_positions: bool = False) -> torch.Tensor:
        """Feed each sequence its next count tokens; logits [rows, vocab] of the last ([1, count, vocab] with
        all_positions)."""
        model, device = self.model, self.model.device
        self.cache.set_batch([sequence.id for sequence in sequences])
        ids = torch.tensor([s.all_tokens[s.cached:s.cached + count] for s in sequences], device=device)
        positions = prefix = None
        if self.config.position == "glm2d":
            positions = torch.stack([self._glm_positions(s, count) for s in sequences]).to(device)
        if self.config.arch == "prefix_decoder":  # a prompt fed whole (never chunked) attends to all of itself
            lengths = [len(s.request.inputs) - (positions is not None) if s.cached == 0 else 0 for s in sequences]
            prefix = torch.tensor(lengths, device=device) if any(lengths) else None
        memory = padding = None
        if self.config.arch == "encoder_decoder":
            memory, padding = self._memory(sequences)
        inputs = model.prepare(ids, position_ids=positions, prefix_lengths=prefix, cache=self.cache, check_ids=False)
        hidden, _ = model.hidden(inputs, memory, padding)
        for sequence in sequences:
            sequence.cached += count
            self._register_blocks(sequence)
        return model.logits(hidden) if all_positions else model.logits(hidden[:, -1])

    def _glm_positions(self, sequence: _Sequence, count: int) -> torch.Tensor:
        """GLM's 2-D positions [2, count] of the tokens fed: part A counts from 0 with block position 0; [sop] and
        the span sit at the mask token's position with block positions 1, 2, …"""
        part_a = len(sequence.request.inputs) - 1
        index = torch.arange(sequence.cached, sequence.cached + count)
        in_span = index >= part_a
        first = torch.where(in_span, sequence.request.blank_position, index)
        return torch.stack([first, torch.where(in_span, index - part_a + 1, 0)])

    def _memory(self, sequences: list[_Sequence]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rows' encoder outputs, padded to the longest [rows, source, d_model], and their padding mask."""
        for sequence in sequences:
            request = sequence.request
            if request.memory is None:
                ids = torch.tensor([request.prompt], device=self.model.device)
                request.memory = self.model.encode(ids, check_ids=False)[0][0]
        memories = [sequence.request.memory for sequence in sequences]
        longest = max(memory.shape[0] for memory in memories)
        memory = torch.stack([torch.nn.functional.pad(m, (0, 0, 0, longest - m.shape[0])) for m in memories])
        if all(m.shape[0] == longest for m in memories):
            return memory, None
        lengths = torch.tensor([m.shape[0] for m in memories], device=memory.device)
        return memory, (torch.arange(longest, device=memory.device) < lengths[:, None]).long()

    def _register_blocks(self, sequence: _Sequence) -> None:
        """Make the sequence's newly filled blocks findable by the prefix cache."""
        if not self.prefix_caching:
            return
        table, size = self.cache.block_tables[sequence.id], self.block_size
        tokens = None
        while len(sequence.keys) < sequence.cached // size:
            tokens = tokens or sequence.all_tokens
            start = len(sequence.keys) * size
            key = _block_key(sequence.keys[-1] if sequence.keys else b"", tokens[start:start + size])
            self.cache.allocator.register(table[len(sequence.keys)], key)
            sequence.keys.append(key)

    def _score_prompt(self, sequence: _Sequence, count: int, logits: torch.Tensor) -> None:
        """Append the log-probabilities of the prompt tokens this chunk's logits [1, count, vocab] predict."""
        request = sequence.request
        scored = request.prompt_logprobs
        start = sequence.cached - count  # logits[j] follow token start + j and predict token start + j + 1
        targets = request.prompt[len(scored):]
        first = len(scored) - 1 - start  # the chunk position that predicts the next unscored token
        rows = logits[0, first:first + len(targets)].float().log_softmax(-1)
        targets = targets[:rows.shape[0]]
        chosen = rows.gather(1, torch.tensor(targets, device=rows.device)[:, None])[:, 0].tolist()
        k = min(request.prompt_logprobs_k, rows.shape[-1])
        top = rows.topk(k, dim=-1) if k else None
        for j, logprob in enumerate(chosen):
            alternatives = {} if top is None else dict(zip(top.indices[j].tolist(), top.values[j].tolist()))
            scored.append(PromptLogprob(logprob, alternatives))

    def _choose(self, sequences: list[_Sequence], logits: torch.Tensor, touched: dict[str, _Request]) -> None:
        """Choose each row's next token with its own options (a prefilled request's samples all from its first
        logits) and take it in."""
        rows = []
        for row, sequence in enumerate(sequences):
            request = sequence.request
            if not request.forked:  # sample 0 has prefilled the prompt: the others share its blocks from here
                for other in request.sequences[1:]:
                    self.cache.fork_sequence(sequence.id, other.id)
                    other.cached = sequence.cached
                    other.keys = list(sequence.keys)
                    self.running.insert(self.running.index(sequence) + 1 + other.index - 1, other)
                rows.extend((row, s) for s in request.sequences)
                request.forked = True
            else:
                rows.append((row, sequence))
        plain = logits.argmax(dim=-1).tolist()
        for row, sequence in rows:
            touched[sequence.request.id] = sequence.request
            if sequence.request.max_new_tokens == 0:
                self._finish(sequence, "length")
                continue
            config = sequence.request.config
            if _plain_greedy(config):
                self._accept(sequence, plain[row], None)
                continue
            row_logits = logits[row:row + 1]
            if sequence.counts is None:
                history = torch.tensor([sequence.request.inputs], device=logits.device)
                counts_config = config.replace(eos_token_id=config.eos_token_ids or None)
                sequence.counts = TokenCounts.start(counts_config, history, self.config.vocab_size)
            history = None
            if config.no_repeat_ngram_size:
                history = torch.tensor([sequence.all_tokens], device=logits.device)
            scores = process_logits(row_logits, config, sequence.counts, history)
            generator = None
            if sequence.generator is not None:
                if sequence.generator.device != logits.device:
                    state = sequence.generator.initial_seed()
                    sequence.generator = torch.Generator(logits.device).manual_seed(state)
                generator = [sequence.generator]
            choice = choose_tokens(scores, config, generator, row_logits)
            sequence.counts.update(choice.tokens)
            self._accept(sequence, int(choice.tokens[0]), choice)

    def _accept(self, sequence: _Sequence, token: int, choice) -> None:
        """Take in a chosen token: its log-probabilities, its text, and whether it ends the sequence."""
        request, config = sequence.request, sequence.request.config
        sequence.tokens.append(token)
        self._generated += 1
        request.first_token_time = request.first_token_time or time.monotonic()
        if choice is not None and choice.logprobs is not None:
            sequence.logprobs.append(float(choice.logprobs[0]))
            sequence.top_logprobs.append(dict(zip(choice.top_tokens[0].tolist(), choice.top_logprobs[0].tolist())))
        if not config.ignore_eos and token in config.eos_token_ids:
            self._add_text(sequence, None)
            self._finish(sequence, "stop")
            return
        self._add_text(sequence, token)
        if sequence.stops.stopped:
            self._finish(sequence, "stop")
        elif len(sequence.tokens) >= request.max_new_tokens:
            self._add_text(sequence, None)
            self._finish(sequence, "length")

    def _add_text(self, sequence: _Sequence, token: int | None) -> None:
        """Extend the sequence's text by a token's (None: by everything held back, at the end)."""
        if sequence.decoder is None:
            return
        if token is None:
            sequence.text += sequence.stops.push(sequence.decoder.flush()) + sequence.stops.flush()
        else:
            sequence.text += sequence.stops.push(sequence.decoder.push([token]))

    def _finish(self, sequence: _Sequence, reason: str) -> None:
        """End a sequence: it leaves the batch (or the queue) and its blocks return to the pool."""
        sequence.finish_reason = reason
        if sequence in self.running:
            self.running.remove(sequence)
            self.cache.free_sequence(sequence.id)
        elif sequence in self.waiting:
            self.waiting.remove(sequence)

    def _finish_request(self, request: _Request, reason: str) -> None:
        for sequence in request.sequences:
            if sequence.finish_reason is None:
                self._finish(sequence, reason)

    def abort_all(self) -> list[str]:
        """Abort every request and start again with an empty cache (after an internal error); their ids."""
        with self._arrival_lock:
            ids = [request.id for request in self._arrivals] + list(self.requests)
            self._arrivals.clear()
        for request in self.requests.values():
            for sequence in request.sequences:
                sequence.finish_reason = sequence.finish_reason or "abort"
        self.requests.clear()
        self.waiting.clear()
        self.running.clear()
        self.cache = PagedCache.for_model(self.model, self.cache.num_blocks, self.block_size)
        self._stats = self._count()
        return ids

    # --- whole batches -------------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], config: GenerationConfig | None = None, *,
                 progress: bool = False) -> list[RequestOutput]:
        """Run prompts (token id lists) to the end under continuous batching; their final outputs in order."""
        ids = [self.add_request(prompt, config) for prompt in prompts]
        finished: dict[str, RequestOutput] = {}
        from tqdm.auto import tqdm

        with tqdm(total=len(ids), disable=not progress, desc="generate", unit="request") as bar:
            while self.has_unfinished():
                for output in self.step():
                    if output.finished:
                        finished[output.request_id] = output
                        bar.update(1)
        return [finished[request_id] for request_id in ids]


class AsyncEngine:
    """An Engine stepped in a background thread, with an async stream of outputs per request for servers."""

    def __init__(self, engine: Engine, idle_wait: float = 0.05):
        self.engine = engine
        self._idle_wait = idle_wait
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stop = False
        self._accepting = True
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start stepping the engine in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmlab-engine", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            if not self.engine.has_unfinished():
                self._wake.wait(self._idle_wait)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # a bug, never a client's input: fail the requests in flight, keep serving
                outputs = []
                for request_id in self.engine.abort_all():
                    self._deliver(request_id, error)
            for output in outputs:
                self._deliver(output.request_id, output)

    def _deliver(self, request_id: str, item) -> None:
        target = self._queues.get(request_id)
        if target is not None:
            loop, queue = target
            loop.call_soon_threadsafe(queue.put_nowait, item)

    async def generate(self, prompt_ids: Sequence[int], config: GenerationConfig | None = None, *,
                       request_id: str | None = None, prompt_logprobs: int | None = None,
                       max_new_tokens: int | None = None) -> AsyncIterator[RequestOutput]:
        """The request's output after every step that changed it, the finished one last; leaving the loop early
        (a client that went away) aborts the request."""
        if not self._accepting:
            raise EngineFullError("The engine is shutting down and takes no new requests.")
        queue: asyncio.Queue = asyncio.Queue()
        request_id = self.engine.add_request(prompt_ids, config, request_id=request_id,
                                             prompt_logprobs=prompt_logprobs, max_new_tokens=max_new_tokens)
        self._queues[request_id] = (asyncio.get_running_loop(), queue)
        self._wake.set()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                while not queue.empty() and not isinstance(item, BaseException) and not item.finished:
                    item = queue.get_nowait()  # a slow reader gets the latest state
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self.engine.abort(request_id)
                self._wake.set()

    async def shutdown(self, drain: bool = True) -> None:
        """Stop taking requests; with drain, let the running and waiting ones finish first; then stop the thread."""
        self._accepting = False
        while drain and self.engine.has_unfinished():
            await asyncio.sleep(self._idle_wait)
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

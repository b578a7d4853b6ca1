"""Generation (survey §6): prefill the prompts, then decode one token a step through the model's prepare → stack →
head seam, with a key/value cache from llmlab.infer.cache and the token choice of llmlab.infer.sampling.

    result = generate(model, ["Once upon a time", "The"], GenerationConfig(max_new_tokens=32))
    for piece in stream(model, "Once upon a time", max_new_tokens=32):
        print(piece.text, end="")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from llmlab.errors import ConfigError
from llmlab.infer import native_step
from llmlab.infer.cache import DynamicCache, RaggedCache, StaticCache
from llmlab.infer.compiled import StaticDecoder, compiled_capacity
from llmlab.infer.config import GenerationConfig
from llmlab.infer.detokenize import IncrementalDecoder
from llmlab.infer.paged import PagedCache
from llmlab.infer.sampling import PAD, TokenCounts, choose_tokens, generators, process_logits
from llmlab.infer.stopping import StopStrings, truncate_at_stop
from llmlab.model.transformer import (FIXED_CONTEXT_POSITIONS, check_model_inputs, positions_from_mask,
                                      register_generation)

if TYPE_CHECKING:
    from llmlab.infer.speculative import SpeculationStats

CACHES = ("auto", "dynamic", "static", "ragged", "paged")  # auto: static to compile, else ragged on a CPU, else dynamic
PAGED_BLOCK_SIZE = 16
Prompts = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor


@dataclass
class GenerationResult:
    """What generate returns: per sequence (prompt-major, n per prompt) its new tokens and why it stopped."""

    tokens: list[list[int]]
    finish_reasons: list[str]  # "stop" (an EOS id or a stop string) or "length"
    text: list[str] | None = None  # decoded, when there is a tokenizer
    logprobs: list[list[float]] | None = None  # log p of each new token under the model, when asked for
    top_logprobs: list[list[dict[int, float]]] | None = None  # the config.logprobs most likely alternatives
    sequences_scores: list[float] | None = None  # beam search: log p / (new tokens) ** length_penalty of each
    speculation: list[SpeculationStats] | None = None  # per sequence, when a draft model proposed tokens


@dataclass
class Piece:
    """One step of stream(): the new text (complete characters only), the new token ids, and the finish reason on
    the last piece."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def _new_cache(model, kind: str, batch: int, capacity: int, fixed_shapes: bool = False,
               padding: torch.Tensor | None = None):
    config = model.config
    if kind == "ragged":  # each row's region holds its prompt without the padding
        return RaggedCache.for_model(model, [capacity] * batch if padding is None else (capacity - padding).tolist())
    if kind == "dynamic":
        return DynamicCache(config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers)
    if kind == "static":
        return StaticCache.for_model(model, batch, capacity, fixed_shapes=fixed_shapes)
    if kind == "paged":  # one sequence a row, blocks enough for all of them
        paged = PagedCache.for_model(model, batch * -(-capacity // PAGED_BLOCK_SIZE), PAGED_BLOCK_SIZE)
        for row in range(batch):
            paged.add_sequence(row)
        paged.set_batch(range(batch))
        return paged
    raise ConfigError(f"cache must be one of {', '.join(CACHES)}, not {kind!r}.")


class DecodeState:
    """One batch being generated: the cache, the encoder output, the attention mask and every row's tokens so far
    (decoder tokens, from the start token, for encoder-decoders)."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
                 cache: str | None = "auto", blank_positions: torch.Tensor | None = None,
                 compile: bool | str | Callable = False):
        """blank_positions [batch] makes it GLM blank infilling: each prompt ends with [sop] after part A, and the
        new tokens take the position of their row's mask token, counting 1, 2, … in the second position row.
        compile (with a static cache) runs the decode steps through llmlab.infer.compiled."""
        if cache == "auto":  # a GPU keeps what is allocated, so there the cache grows as the rows do
            cache = "static" if compile is not False else "ragged" if input_ids.device.type == "cpu" else "dynamic"
        config = model.config
        self.model, self.config = model, config
        batch, device = input_ids.shape[0], input_ids.device
        self.memory = self.memory_padding = self.prefix = None
        if config.arch == "encoder_decoder":
            self.memory, _ = model.encode(input_ids, attention_mask, check_ids=False)
            self.memory_padding = attention_mask
            start = config.decoder_start_token_id
            start = start if start is not None else (config.pad_token_id or 0)
            self.sequence, self.mask = input_ids.new_full((batch, 1), start), None
        else:
            self.sequence, self.mask = input_ids, attention_mask
        if config.arch == "prefix_decoder":  # the prompt is bidirectional; GLM's closing [sop] already is part B
            prefix = input_ids.shape[1] - (blank_positions is not None)
            self.prefix = torch.full((batch,), prefix, dtype=torch.long, device=device)
        if compile is not False and (cache != "static" or config.arch not in ("decoder", "prefix_decoder")
                                     or blank_positions is not None):
            raise ConfigError("compile needs cache=\"static\" and a decoder-only model (GLM blank infilling aside).")
        capacity = self.sequence.shape[1] + max_new_tokens
        capacity = capacity if compile is False else compiled_capacity(model, capacity)
        # a ragged cache stores no padding: each prompt is prefilled alone, and positions are its slots
        self.padding = None
        if cache == "ragged" and self.mask is not None and bool((self.mask[:, 1:] >= self.mask[:, :-1]).all()):
            self.padding = (self.mask == 0).sum(1)  # left padding, left out (other masks are attended as given)
            if not bool(self.padding.any()):
                self.padding = None  # prompts of one length: one batched prefill
        self.cache = None if cache is None else _new_cache(model, cache, batch, capacity, compile is not False,
                                                           self.padding)
        self.blank_positions = blank_positions
        self.prompt_length = self.sequence.shape[1]
        self.cached = 0  # how many of the tokens so far the cache holds
        self.compile, self.decoder = compile, None  # compiled decode steps over a static cache: llmlab.infer.compiled
        # one native call per decode step (llmlab.infer.native_step) where a prepacked model takes it, with the
        # weights packed as they are when this generation starts
        self.native_step = None
        if (isinstance(self.cache, RaggedCache) and self.memory is None and blank_positions is None
                and (self.mask is None or self.padding is not None)):
            step = native_step.lower(model)
            self.native_step = None if step is None else step.bind(max(self.cache.capacities))

    def logits(self) -> torch.Tensor:
        """Next-token logits [batch, vocab] after the tokens so far (the whole prompt on the first call)."""
        if self.decoder is not None:
            logits = self.decoder(self.sequence[:, -1:])
            self.cached = self.sequence.shape[1]
            return logits
        return self.score(1)[:, 0]

    def score(self, count: int) -> torch.Tensor:
        """Next-token logits [batch, count, vocab] after each of the last count tokens, running the model on every
        token the cache does not hold yet (on all of them without a cache)."""
        start = 0 if self.cache is None else self.cached
        ids = self.sequence[:, start:]
        positions = None if self.blank_positions is None else self._blank_positions(ids.shape[1])
        if start == 0 and self.padding is not None:
            return self._prefill_rows(ids, positions, count)
        if self.native_step is not None and start > 0 and ids.shape[1] == count == 1:
            return self._native_logits(ids)
        inputs = self.model.prepare(ids, None if self.padding is not None else self.mask, positions,
                                    prefix_lengths=self.prefix if start == 0 else None, cache=self.cache,
                                    check_ids=False)
        hidden, _ = self.model.hidden(inputs, self.memory, self.memory_padding)
        self.cached = self.sequence.shape[1]
        if start == 0 and isinstance(self.cache, StaticCache) and self.memory is None and self.blank_positions is None:
            self.decoder = StaticDecoder(self.model, self.cache, self.mask, self.compile)  # fixed-shape decode steps
        return self.model.logits(hidden[:, -count:])

    def _native_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """score(1) of one new token per row [batch, 1] through the native step."""
        positions, slots, spans = self.cache.one_token_plan()
        logits = self.native_step(ids[:, 0], self.cache, positions, slots, spans)
        self.cache.advance(1)
        self.cached = self.sequence.shape[1]
        return logits[:, None]

    def _prefill_rows(self, ids: torch.Tensor, positions: torch.Tensor | None, count: int) -> torch.Tensor:
        """score(count) of the prompts, each prefilled alone without its padding into its region of a ragged cache."""
        logits = []
        for row, pad in enumerate(self.padding.tolist()):
            self.cache.select([row])
            inputs = self.model.prepare(
                ids[row:row + 1, pad:], None, None if positions is None else positions[row:row + 1, ..., pad:],
                prefix_lengths=None if self.prefix is None else self.prefix[row:row + 1] - pad, cache=self.cache,
                check_ids=False)
            hidden, _ = self.model.hidden(inputs)
            logits.append(self.model.logits(hidden[:, -count:]))
        self.cache.select()
        self.cached = self.sequence.shape[1]
        return torch.cat(logits)

    def _blank_positions(self, length: int) -> torch.Tensor:
        """GLM's 2-D positions [batch, 2, length] of the last length tokens: part A counts its real tokens from 0
        with block position 0; [sop] and the span sit at the mask token's position with block positions 1, 2, …"""
        batch, total = self.sequence.shape
        part_a = self.prompt_length - 1
        index = torch.arange(total, device=self.sequence.device).expand(batch, -1)
        first = positions_from_mask(self.mask, total) if self.mask is not None else index
        in_span = index >= part_a
        first = torch.where(in_span, self.blank_positions[:, None], first)
        second = torch.where(in_span, index - part_a + 1, torch.zeros_like(index))
        return torch.stack([first, second], dim=1)[..., -length:]

    def append(self, tokens: torch.Tensor) -> None:
        """Add this step's token [batch] to every row."""
        self.extend(tokens[:, None])

    def extend(self, tokens: torch.Tensor) -> None:
        """Add tokens [batch, new] to every row."""
        self.sequence = torch.cat([self.sequence, tokens], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(tokens.shape)], dim=1)

    def crop(self, length: int) -> None:
        """Forget every token after the first length (rejected draft tokens): in the rows, the mask and the cache."""
        self.sequence = self.sequence[:, :length]
        self.mask = None if self.mask is None else self.mask[:, :length]
        if self.cache is not None and self.cached > length:
            self.cache.truncate(length if self.padding is None else length - self.padding)
            self.cached = length
            self.decoder = None  # its positions run one a step: the general path takes over after a rollback

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the given rows, in that order, repeated as often as they appear (n samples of one prefill, beams)."""
        def pick(tensor):
            return None if tensor is None else tensor.index_select(0, rows)
        self.sequence, self.mask, self.prefix = pick(self.sequence), pick(self.mask), pick(self.prefix)
        self.padding = pick(self.padding)
        self.blank_positions = pick(self.blank_positions)
        self.memory, self.memory_padding = pick(self.memory), pick(self.memory_padding)
        if self.cache is not None:
            self.cache.reorder(rows)
        if self.decoder is not None:
            self.decoder.reorder(rows)

    def history(self) -> torch.Tensor:
        """Every row's tokens so far [batch, T], PAD where the prompt was padded."""
        return self.sequence if self.mask is None else self.sequence.masked_fill(self.mask == 0, PAD)


def _context_left(model, prompt_length: int, where: str) -> int:
    """How many tokens the model's context still holds after a prompt; a prompt that fills it is refused."""
    limit = model.config.max_seq_len
    if model.config.arch != "encoder_decoder" and prompt_length >= limit:
        raise ConfigError(f"{where} has {prompt_length} tokens, but the model's context holds {limit} "
                          f"(max_seq_len), with room for at least one new token.")
    return limit - (1 if model.config.arch == "encoder_decoder" else prompt_length)


def _check_model_can_generate(model) -> None:
    if model.config.arch == "encoder":
        raise ConfigError("An encoder-only model cannot generate text; it gives logits or hidden states for a text.")


@dataclass(frozen=True)
class BlankTokens:
    """GLM's special token ids for blank infilling: the mask tokens ([MASK], [sMASK], [gMASK]), [sop] and [eop]."""

    masks: tuple[int, ...]
    sop: int
    eop: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "BlankTokens":
        """The ids of GLM's special tokens in a tokenizer trained with the glm objective's tokens."""
        from llmlab.data.tokenizer import END_OF_PIECE, GENERATION_MASK, MASK, SENTENCE_MASK, START_OF_PIECE

        names = (MASK, SENTENCE_MASK, GENERATION_MASK, START_OF_PIECE, END_OF_PIECE)
        ids = {name: tokenizer.token_to_id(name) if tokenizer is not None else None for name in names}
        if ids[START_OF_PIECE] is None or ids[END_OF_PIECE] is None or all(ids[m] is None for m in names[:3]):
            raise ConfigError(f"GLM blank infilling needs a tokenizer with {', '.join(names)} (train it with "
                              f"--objective glm), or blank_tokens=BlankTokens(...).")
        return cls(tuple(ids[m] for m in names[:3] if ids[m] is not None), ids[START_OF_PIECE], ids[END_OF_PIECE])

    def prompts(self, lists: list[list[int]]) -> tuple[list[list[int]], list[int]]:
        """Each prompt (part A, with exactly one mask token) followed by [sop], and the mask token's position."""
        positions = []
        for index, prompt in enumerate(lists):
            found = [i for i, token in enumerate(prompt) if token in self.masks]
            if len(found) != 1:
                raise ConfigError(f"Prompt {index} has {len(found)} mask tokens; GLM fills one blank a call, so give "
                                  f"exactly one ([MASK], [sMASK] or [gMASK]).")
            positions.append(found[0])
        return [prompt + [self.sop] for prompt in lists], positions


def _token_lists(prompts: Prompts, tokenizer) -> list[list[int]]:
    """The prompts as lists of token ids (strings through the tokenizer); an empty prompt is refused."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist() if prompts.dim() == 2 else [prompts.tolist()]
    elif isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts:
        raise ConfigError("generate needs at least one prompt.")
    lists = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if tokenizer is None:
                raise ConfigError("Text prompts need a tokenizer: load the model from a directory with tokenizer.json "
                                  "or pass tokenizer=, or give token ids.")
            prompt = tokenizer.encode(prompt).ids
        if not isinstance(prompt, Sequence) or not all(isinstance(t, int) for t in prompt):
            raise ConfigError(f"Prompt {index} is neither text nor a list of token ids.")
        if not prompt:
            raise ConfigError(f"Prompt {index} is empty; give at least one token.")
        lists.append(list(prompt))
    return lists


def left_padded(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids [batch, longest] padded on the left, and their attention mask (None when no row is padded)."""
    longest = max(map(len, prompts))
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    if all(len(p) == longest for p in prompts):
        return ids, None
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device)
    return ids, mask


def resolve_config(model, config: GenerationConfig | None, changes: dict) -> GenerationConfig:
    """The options of a request: config (else the checkpoint's generation_config.json, else the defaults) with
    changes applied, and the model's EOS id when none is given."""
    config = config or getattr(model, "generation_config", None) or GenerationConfig()
    config = config.replace(**changes) if changes else config
    if config.eos_token_id is None and model.config.eos_token_id is not None:
        config = config.replace(eos_token_id=model.config.eos_token_id)
    return config


def _pad_id(model, config: GenerationConfig) -> int:
    pad = model.config.pad_token_id
    return pad if pad is not None else (config.eos_token_ids[0] if config.eos_token_ids else 0)


def start_decoding(state: DecodeState, config: GenerationConfig, rows_per_prompt: int = 1
                   ) -> tuple[torch.Tensor | None, TokenCounts, torch.Tensor]:
    """Prefill: (the EOS ids on the device, None when ignored; the token counts; the first logits), each prompt's row
    then repeated rows_per_prompt times in the state, the counts and the logits."""
    eos = None if config.ignore_eos or not config.eos_token_ids else torch.tensor(config.eos_token_ids,
                                                                                  device=state.sequence.device)
    counts = TokenCounts.start(config.replace(eos_token_id=config.eos_token_ids or None), state.history(),
                               state.model.config.vocab_size)
    logits = state.logits()
    if rows_per_prompt > 1:
        rows = torch.arange(state.sequence.shape[0], device=logits.device).repeat_interleave(rows_per_prompt)
        state.reorder(rows)
        logits, counts = logits.index_select(0, rows), counts.select(rows)
    return eos, counts, logits


@torch.no_grad()
def decode_steps(state: DecodeState, config: GenerationConfig, steps: int, rows_per_prompt: int = 1,
                 seeds: list[int] | None = None, pad: int = 0, batch_generator: torch.Generator | None = None
                 ) -> Iterator[tuple[torch.Tensor, object, torch.Tensor]]:
    """Choose up to steps tokens for every row (each prompt fanned out to rows_per_prompt rows after one prefill).

    Yields (tokens [rows], their Choice, finished [rows]) each step; a row is finished after an EOS id, and the
    caller may finish rows itself (stop strings) by setting finished[row] = True before asking for the next step.
    A finished row's later tokens are pad. Sampling draws row i from seeds[i] when given, else batch_generator."""
    eos, counts, logits = start_decoding(state, config, rows_per_prompt)
    sampler = generators(seeds, logits.device) if seeds is not None and config.do_sample else batch_generator
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    for step in range(steps):
        scores = process_logits(logits, config, counts, state.history() if config.no_repeat_ngram_size else None)
        choice = choose_tokens(scores, config, sampler, logits)
        tokens = torch.where(finished, torch.full_like(choice.tokens, pad), choice.tokens)
        counts.update(tokens)
        if eos is not None:
            finished |= torch.isin(tokens, eos)
        yield tokens, choice, finished
        if step == steps - 1 or bool(finished.all()):
            return
        state.append(tokens)
        logits = state.logits()


def decode(state: DecodeState, config: GenerationConfig, steps: int, rows_per_prompt: int = 1,
           seeds: list[int] | None = None, pad: int = 0, on_step: Callable[[torch.Tensor], list[int]] | None = None,
           batch_generator: torch.Generator | None = None) -> tuple[torch.Tensor, list]:
    """Run decode_steps to the end: (new tokens [rows, ≤ steps], the Choice of each step); on_step(tokens) may
    return rows to finish."""
    new_tokens, choices = [], []
    for tokens, choice, finished in decode_steps(state, config, steps, rows_per_prompt, seeds, pad, batch_generator):
        new_tokens.append(tokens)
        choices.append(choice)
        if on_step is not None:
            for row in on_step(tokens):
                finished[row] = True
    return torch.stack(new_tokens, dim=1), choices


def _prepare_request(model, prompts: Prompts, config: GenerationConfig | None, changes: dict, tokenizer,
                     blank_tokens: BlankTokens | None = None):
    """(config, token lists, steps that fit the context, tokenizer, GLM mask positions or None) of a request."""
    _check_model_can_generate(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    config = resolve_config(model, config, changes)
    lists = _token_lists(prompts, tokenizer)
    blanks = None
    if model.config.position == "glm2d":  # blank infilling: generate the span of the prompt's mask token
        blank_tokens = blank_tokens or BlankTokens.from_tokenizer(tokenizer)
        lists, blanks = blank_tokens.prompts(lists)
        config = config.replace(eos_token_id=tuple(dict.fromkeys((*config.eos_token_ids, blank_tokens.eop))))
    steps = min(config.max_new_tokens, min(_context_left(model, len(p), f"Prompt {i}") for i, p in enumerate(lists)))
    for index, prompt in enumerate(lists):
        check_model_inputs(model.config, torch.tensor([prompt]), names=(f"prompt {index}", "attention_mask"))
    return config, lists, steps, tokenizer, blanks


def _as_tensor(values: list[int] | None, device) -> torch.Tensor | None:
    return None if values is None else torch.tensor(values, device=device)


def _seeds(config: GenerationConfig, prompts: int) -> list[int] | None:
    """Sample j of every prompt gets seed + j: a prompt gives the same samples alone as in a batch."""
    return None if config.seed is None else [config.seed + j for _ in range(prompts) for j in range(config.n)]


def generate(model, prompts: Prompts, config: GenerationConfig | None = None, *, tokenizer=None,
             cache: str = "auto", compile: bool | str | Callable = False, blank_tokens: BlankTokens | None = None,
             draft_model=None, speculate_k: int = 4, **changes) -> GenerationResult:
    """Continue each prompt (text, with the model's tokenizer, or token ids; any lengths) as config says.

    Batched prompts give exactly the tokens each gives alone (greedy, or sampled with a seed); n samples per prompt
    share one prefill; generation stops at an EOS id, a stop string, max_new_tokens or the model's context. A GLM
    model (2-D positions) fills the blank of each prompt's one mask token, up to [eop]. num_beams > 1 runs beam
    search (llmlab.infer.beam) and returns the n best hypotheses per prompt. With a draft_model, speculative
    decoding (llmlab.infer.speculative) gives the same greedy tokens, or samples of the same distribution, from
    fewer forward passes of model, speculate_k draft tokens at a time. The cache is by default "ragged" on the CPU
    (each prompt's keys/values without padding, llmlab.infer.cache.RaggedCache), "dynamic" on other devices (it
    grows only as far as the rows do) and "static" with compile=True, which runs the decode step under
    torch.compile (CUDA graphs on a GPU; a string or callable there is the compile backend); "dynamic", "static",
    "ragged" and "paged" may be asked for by name and give the same tokens."""
    if draft_model is not None:
        from llmlab.infer.speculative import speculative_generate  # it builds on this module

        return speculative_generate(model, draft_model, prompts, config, tokenizer=tokenizer, cache=cache,
                                    speculate_k=speculate_k, **changes)
    config, lists, steps, tokenizer, blanks = _prepare_request(model, prompts, config, changes, tokenizer,
                                                               blank_tokens)
    if config.num_beams > 1:
        if blanks is not None:
            raise ConfigError("GLM blank infilling runs with num_beams=1; beam search over 2-D positions is not "
                              "supported.")
        from llmlab.infer.beam import generate_beams  # beam.py builds on this module

        return generate_beams(model, lists, config, steps, tokenizer, cache)
    pad = _pad_id(model, config)
    ids, mask = left_padded(lists, pad, model.device)
    state = DecodeState(model, ids, mask, steps, cache, _as_tensor(blanks, model.device), compile)
    watch = StopWatch(tokenizer, config, len(lists) * config.n) if config.stop else None
    new, choices = decode(state, config, steps, config.n, _seeds(config, len(lists)), pad, watch)
    eos = () if config.ignore_eos else config.eos_token_ids
    tokens, reasons = [], []
    for row, sequence in enumerate(new.tolist()):
        length = next((step + 1 for step, token in enumerate(sequence) if token in eos), len(sequence))
        if watch is not None and watch.stop_steps[row] is not None:
            length = min(length, watch.stop_steps[row] + 1)
        tokens.append(sequence[:length])
        stopped = sequence[length - 1] in eos or (watch is not None and watch.stop_steps[row] is not None)
        reasons.append("stop" if stopped else "length")
    result = GenerationResult(tokens, reasons)
    if tokenizer is not None:
        result.text = [decoded_text(tokenizer, row_tokens, config) for row_tokens in tokens]
    if config.logprobs is not None:
        result.logprobs = [[float(choices[step].logprobs[row]) for step in range(len(row_tokens))]
                           for row, row_tokens in enumerate(tokens)]
        result.top_logprobs = [[dict(zip(choices[step].top_tokens[row].tolist(),
                                         choices[step].top_logprobs[row].tolist())) for step in range(len(row_tokens))]
                               for row, row_tokens in enumerate(tokens)]
    return result


def decoded_text(tokenizer, tokens: list[int], config: GenerationConfig) -> str:
    """The text of one sequence's new tokens, cut at the first stop string."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return truncate_at_stop(text, config.stop, config.include_stop_str_in_output)[0]


class StopWatch:
    """Watches each row's decoded text for the stop strings, and says at which step each row completed one."""

    def __init__(self, tokenizer, config: GenerationConfig, rows: int):
        if tokenizer is None:
            raise ConfigError("Stop strings need a tokenizer to decode the new tokens; pass tokenizer=.")
        self.rows = [(IncrementalDecoder(tokenizer), StopStrings(config.stop, config.include_stop_str_in_output))
                     for _ in range(rows)]
        self.stop_steps: list[int | None] = [None] * rows
        self.step = 0

    def __call__(self, tokens: torch.Tensor) -> list[int]:
        """Feed one step's tokens [rows]; return the rows that completed a stop string now."""
        stopped = []
        for row, token in enumerate(tokens.tolist()):
            decoder, stops = self.rows[row]
            if self.stop_steps[row] is None:
                stops.push(decoder.push([token]))
                if stops.stopped:
                    self.stop_steps[row] = self.step
                    stopped.append(row)
        self.step += 1
        return stopped


def stream(model, prompt: str | Sequence[int], config: GenerationConfig | None = None, *, tokenizer=None,
           cache: str = "auto", blank_tokens: BlankTokens | None = None, draft_model=None, speculate_k: int = 4,
           **changes) -> Iterator[Piece]:
    """Generate for one prompt and yield each step's new text as it is decided (whole characters only, never part
    of a stop string), with the finish reason on the last piece. With a draft_model the tokens come from
    speculative decoding (llmlab.infer.speculative), each as soon as the target has decided it."""
    config, lists, steps, tokenizer, blanks = _prepare_request(model, prompt, config, changes, tokenizer,
                                                               blank_tokens)
    if len(lists) != 1 or config.n != 1 or config.num_beams != 1:
        raise ConfigError("stream takes one prompt with n=1 and num_beams=1; use generate for more.")
    if tokenizer is None:
        raise ConfigError("stream needs a tokenizer to decode the new tokens; pass tokenizer=.")
    decoder = IncrementalDecoder(tokenizer, context=lists[0][-5:])
    stops = StopStrings(config.stop, config.include_stop_str_in_output)
    eos = () if config.ignore_eos else config.eos_token_ids
    seeds = _seeds(config, 1)
    if draft_model is None:
        state = DecodeState(model, torch.tensor(lists, device=model.device), None, steps, cache,
                            _as_tensor(blanks, model.device))
        tokens = (int(chosen[0]) for chosen, _, _ in decode_steps(state, config, steps, seeds=seeds))
    else:
        from llmlab.infer.speculative import check_speculation, speculation_steps  # it builds on this module

        check_speculation(model, draft_model, config, cache, speculate_k, blanks)
        # the stop strings are watched here, on the text as it streams
        tokens = (token for token, _ in speculation_steps(model, draft_model, lists[0], config.replace(stop=()),
                                                          steps, cache, speculate_k, seeds and seeds[0]))
    for step, token in enumerate(tokens):
        if token in eos:
            yield Piece(stops.push(decoder.flush()) + stops.flush(), [token], "stop")
            return
        text = stops.push(decoder.push([token]))
        if stops.stopped:
            yield Piece(text, [token], "stop")
            return
        if step == steps - 1:
            yield Piece(text + stops.push(decoder.flush()) + stops.flush(), [token], "length")
            return
        yield Piece(text, [token])


@torch.no_grad()
def generate_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True, cache: str = "auto",
                 compile: bool | str | Callable = False, **options) -> torch.Tensor:
    """Model.generate's Hugging Face-style call on a (left-padded) batch: prompt + new tokens [batch, prompt + new]
    (decoder ids from the start token for encoder-decoders), rows that stopped filled with the pad token; options are
    other GenerationConfig fields."""
    _check_model_can_generate(model)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                              top_k=top_k or 0, top_p=1.0 if top_p is None else top_p, eos_token_id=eos_token_id,
                              **options)
    config = resolve_config(model, config, {})
    check_model_inputs(model.config, input_ids, attention_mask)
    length = 1 if model.config.arch == "encoder_decoder" else input_ids.shape[1]
    if model.config.position in FIXED_CONTEXT_POSITIONS and length + max_new_tokens > model.config.max_seq_len:
        raise ConfigError(f"{length} prompt tokens plus max_new_tokens={max_new_tokens} exceed the model's "
                          f"max_seq_len {model.config.max_seq_len}.")
    state = DecodeState(model, input_ids, attention_mask, max_new_tokens, cache if use_cache else None,
                        compile=compile)
    if config.num_beams > 1:
        from llmlab.infer.beam import generate_beam_ids

        return generate_beam_ids(state, config, max_new_tokens, _pad_id(model, config))
    prompt = state.sequence
    new, _ = decode(state, config, max_new_tokens, pad=_pad_id(model, config), batch_generator=generator)
    return torch.cat([prompt, new], dim=1)


register_generation(generate_ids)  # Model.generate, the Hugging Face-style call, is this

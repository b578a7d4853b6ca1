"""Generation (survey §6): prefill the prompts, then decode one token a step through the model's prepare → stack →
head seam, with a key/value cache from llmlab.infer.cache and the token choice of llmlab.infer.sampling.

    result = generate(model, ["Once upon a time", "The"], GenerationConfig(max_new_tokens=32))
    for piece in stream(model, "Once upon a time", max_new_tokens=32):
        print(piece.text, end="")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from llmlab.errors import ConfigError
from llmlab.infer.cache import DynamicCache, StaticCache
from llmlab.infer.compiled import StaticDecoder, compiled_capacity
from llmlab.infer.config import GenerationConfig
from llmlab.infer.detokenize import IncrementalDecoder
from llmlab.infer.sampling import PAD, TokenCounts, choose_tokens, generators, process_logits
from llmlab.infer.stopping import StopStrings, truncate_at_stop
from llmlab.model.transformer import FIXED_CONTEXT_POSITIONS, check_model_inputs

CACHES = ("dynamic", "static")
Prompts = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor


@dataclass
class GenerationResult:
    """What generate returns: per sequence (prompt-major, n per prompt) its new tokens and why it stopped."""

    tokens: list[list[int]]
    finish_reasons: list[str]  # "stop" (an EOS id or a stop string) or "length"
    text: list[str] | None = None  # decoded, when there is a tokenizer
    logprobs: list[list[float]] | None = None  # log p of each new token under the model, when asked for
    top_logprobs: list[list[dict[int, float]]] | None = None  # the config.logprobs most likely alternatives


@dataclass
class Piece:
    """One step of stream(): the new text (complete characters only), the new token ids, and the finish reason on
    the last piece."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


def _new_cache(model, kind: str, batch: int, capacity: int):
    config = model.config
    if kind == "dynamic":
        return DynamicCache(config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers)
    if kind == "static":
        return StaticCache.for_model(model, batch, capacity)
    raise ConfigError(f"cache must be one of {', '.join(CACHES)}, not {kind!r}.")


class DecodeState:
    """One batch being generated: the cache, the encoder output, the attention mask and every row's tokens so far
    (decoder tokens, from the start token, for encoder-decoders)."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
                 cache: str | None = "dynamic", compile: bool | str | Callable = False):
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
        if config.arch == "prefix_decoder":
            self.prefix = torch.full((batch,), input_ids.shape[1], dtype=torch.long, device=device)
        if compile is not False and (cache != "static" or config.arch not in ("decoder", "prefix_decoder")):
            raise ConfigError("compile needs cache=\"static\" and a decoder-only model.")
        capacity = self.sequence.shape[1] + max_new_tokens
        capacity = capacity if compile is False else compiled_capacity(model, capacity)
        self.cache = None if cache is None else _new_cache(model, cache, batch, capacity)
        self.fresh = True
        self.compile, self.decoder = compile, None  # decode steps over a static cache: llmlab.infer.compiled

    def logits(self) -> torch.Tensor:
        """Next-token logits [batch, vocab] after the tokens so far (the whole prompt on the first call)."""
        if self.decoder is not None:
            return self.decoder(self.sequence[:, -1:])
        whole = self.fresh or self.cache is None
        ids = self.sequence if whole else self.sequence[:, -1:]
        inputs = self.model.prepare(ids, self.mask, prefix_lengths=self.prefix if whole else None, cache=self.cache,
                                    check_ids=False)
        hidden, _ = self.model.hidden(inputs, self.memory, self.memory_padding)
        if self.fresh and isinstance(self.cache, StaticCache) and self.memory is None:
            self.decoder = StaticDecoder(self.model, self.cache, self.mask, self.compile)
        self.fresh = False
        return self.model.logits(hidden, -1)

    def append(self, tokens: torch.Tensor) -> None:
        """Add this step's token [batch] to every row."""
        self.sequence = torch.cat([self.sequence, tokens[:, None]], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the given rows, in that order, repeated as often as they appear (n samples of one prefill, beams)."""
        def pick(tensor):
            return None if tensor is None else tensor.index_select(0, rows)
        self.sequence, self.mask, self.prefix = pick(self.sequence), pick(self.mask), pick(self.prefix)
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
    if model.config.position == "glm2d":
        raise ConfigError("GLM generation needs 2-D blank-infilling positions; call forward with position_ids.")


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


@torch.no_grad()
def decode_steps(state: DecodeState, config: GenerationConfig, steps: int, rows_per_prompt: int = 1,
                 seeds: list[int] | None = None, pad: int = 0, batch_generator: torch.Generator | None = None
                 ) -> Iterator[tuple[torch.Tensor, object, torch.Tensor]]:
    """Choose up to steps tokens for every row (each prompt fanned out to rows_per_prompt rows after one prefill).

    Yields (tokens [rows], their Choice, finished [rows]) each step; a row is finished after an EOS id, and the
    caller may finish rows itself (stop strings) by setting finished[row] = True before asking for the next step.
    A finished row's later tokens are pad. Sampling draws row i from seeds[i] when given, else batch_generator."""
    eos = None if config.ignore_eos or not config.eos_token_ids else torch.tensor(config.eos_token_ids,
                                                                                  device=state.sequence.device)
    counts = TokenCounts.start(config.replace(eos_token_id=config.eos_token_ids or None), state.history(),
                               state.model.config.vocab_size)
    logits = state.logits()
    if rows_per_prompt > 1:
        rows = torch.arange(state.sequence.shape[0], device=logits.device).repeat_interleave(rows_per_prompt)
        state.reorder(rows)
        logits, counts = logits.index_select(0, rows), counts.select(rows)
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


def _prepare_request(model, prompts: Prompts, config: GenerationConfig | None, changes: dict, tokenizer):
    _check_model_can_generate(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    config = resolve_config(model, config, changes)
    lists = _token_lists(prompts, tokenizer)
    steps = min(config.max_new_tokens, min(_context_left(model, len(p), f"Prompt {i}") for i, p in enumerate(lists)))
    for index, prompt in enumerate(lists):
        check_model_inputs(model.config, torch.tensor([prompt]), names=(f"prompt {index}", "attention_mask"))
    return config, lists, steps, tokenizer


def _seeds(config: GenerationConfig, prompts: int) -> list[int] | None:
    """Sample j of every prompt gets seed + j: a prompt gives the same samples alone as in a batch."""
    return None if config.seed is None else [config.seed + j for _ in range(prompts) for j in range(config.n)]


def generate(model, prompts: Prompts, config: GenerationConfig | None = None, *, tokenizer=None,
             cache: str = "dynamic", compile: bool | str | Callable = False, **changes) -> GenerationResult:
    """Continue each prompt (text, with the model's tokenizer, or token ids; any lengths) as config says.

    Batched prompts give exactly the tokens each gives alone (greedy, or sampled with a seed); n samples per prompt
    share one prefill; generation stops at an EOS id, a stop string, max_new_tokens or the model's context.
    With cache="static", compile=True runs the decode step under torch.compile (CUDA graphs on a GPU); a string or
    callable there is the torch.compile backend."""
    config, lists, steps, tokenizer = _prepare_request(model, prompts, config, changes, tokenizer)
    if config.num_beams > 1:
        raise ConfigError("Beam search (num_beams > 1) is not available yet; use num_beams=1.")
    pad = _pad_id(model, config)
    ids, mask = left_padded(lists, pad, model.device)
    state = DecodeState(model, ids, mask, steps, cache, compile)
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
        result.text = [truncate_at_stop(tokenizer.decode(row_tokens, skip_special_tokens=True), config.stop,
                                        config.include_stop_str_in_output)[0] for row_tokens in tokens]
    if config.logprobs is not None:
        result.logprobs = [[float(choices[step].logprobs[row]) for step in range(len(row_tokens))]
                           for row, row_tokens in enumerate(tokens)]
        result.top_logprobs = [[dict(zip(choices[step].top_tokens[row].tolist(),
                                         choices[step].top_logprobs[row].tolist())) for step in range(len(row_tokens))]
                               for row, row_tokens in enumerate(tokens)]
    return result


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
           cache: str = "dynamic", **changes) -> Iterator[Piece]:
    """Generate for one prompt and yield each step's new text as it is decided (whole characters only, never part
    of a stop string), with the finish reason on the last piece."""
    config, lists, steps, tokenizer = _prepare_request(model, prompt, config, changes, tokenizer)
    if len(lists) != 1 or config.n != 1 or config.num_beams != 1:
        raise ConfigError("stream takes one prompt with n=1 and num_beams=1; use generate for more.")
    if tokenizer is None:
        raise ConfigError("stream needs a tokenizer to decode the new tokens; pass tokenizer=.")
    decoder = IncrementalDecoder(tokenizer, context=lists[0][-5:])
    stops = StopStrings(config.stop, config.include_stop_str_in_output)
    eos = () if config.ignore_eos else config.eos_token_ids
    state = DecodeState(model, torch.tensor(lists, device=model.device), None, steps, cache)
    for step, (tokens, _, finished) in enumerate(decode_steps(state, config, steps, seeds=_seeds(config, 1))):
        token = int(tokens[0])
        if token in eos:
            yield Piece(stops.push(decoder.flush()) + stops.flush(), [token], "stop")
            return
        text = stops.push(decoder.push([token]))
        if stops.stopped:
            finished[0] = True
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
                 generator: torch.Generator | None = None, use_cache: bool = True, cache: str = "dynamic",
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
    state = DecodeState(model, input_ids, attention_mask, max_new_tokens, cache if use_cache else None, compile)
    prompt = state.sequence
    new, _ = decode(state, config, max_new_tokens, pad=_pad_id(model, config), batch_generator=generator)
    return torch.cat([prompt, new], dim=1)

"""Generation (survey §6): prefill the prompt, then decode one token a step through the model's prepare → stack →
head seam, with a key/value cache from llmlab.infer.cache."""

from __future__ import annotations

import torch

from llmlab.errors import ConfigError
from llmlab.infer.cache import DynamicCache, StaticCache
from llmlab.infer.paged import PagedCache
from llmlab.infer.sampling import check_sampling, next_token
from llmlab.model.transformer import FIXED_CONTEXT_POSITIONS, check_model_inputs

CACHES = ("dynamic", "static", "paged")
PAGED_BLOCK_SIZE = 16


def _check_request(model, input_ids, attention_mask, max_new_tokens: int) -> None:
    """Raise ConfigError for a request the model cannot serve: bad ids or mask, no decoder, too long for its context."""
    config = model.config
    if config.arch == "encoder":
        raise ConfigError("An encoder-only model cannot generate text.")
    if config.position == "glm2d":
        raise ConfigError("GLM generation needs 2-D blank-infilling positions; call forward with position_ids.")
    check_model_inputs(config, input_ids, attention_mask)
    length = 1 if config.arch == "encoder_decoder" else input_ids.shape[1]
    if config.position in FIXED_CONTEXT_POSITIONS and length + max_new_tokens > config.max_seq_len:
        raise ConfigError(f"{length} prompt tokens plus max_new_tokens={max_new_tokens} exceed the model's "
                          f"max_seq_len {config.max_seq_len}.")


def _new_cache(model, kind: str, batch: int, capacity: int):
    config = model.config
    if kind == "dynamic":
        return DynamicCache(config.decoder_layers if config.arch == "encoder_decoder" else config.n_layers)
    if kind == "static":
        return StaticCache.for_model(model, batch, capacity)
    if kind == "paged":  # one sequence a row, blocks enough for all of them
        paged = PagedCache.for_model(model, batch * -(-capacity // PAGED_BLOCK_SIZE), PAGED_BLOCK_SIZE)
        for row in range(batch):
            paged.add_sequence(row)
        paged.set_batch(range(batch))
        return paged
    raise ConfigError(f"cache must be one of {', '.join(CACHES)}, not {kind!r}.")


@torch.no_grad()
def generate_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 cache: str = "dynamic") -> torch.Tensor:
    """Greedy or sampled continuation of a (left-padded) batch; returns prompt + new tokens, or for encoder-decoders
    the decoder ids from the start token. Rows that reach EOS are filled with the pad token."""
    config = model.config
    if do_sample:
        check_sampling(temperature, top_k, top_p)
    _check_request(model, input_ids, attention_mask, max_new_tokens)
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else (eos if eos is not None else 0)
    batch, device = input_ids.shape[0], input_ids.device
    memory = memory_padding = prefix = None
    if config.arch == "encoder_decoder":
        memory, _ = model.encode(input_ids, attention_mask)
        memory_padding = attention_mask
        start = config.decoder_start_token_id
        sequence, mask = input_ids.new_full((batch, 1), pad if start is None else start), None
    else:
        sequence, mask = input_ids, attention_mask
    if config.arch == "prefix_decoder":
        prefix = torch.full((batch,), input_ids.shape[1], dtype=torch.long, device=device)
    kv = _new_cache(model, cache, batch, sequence.shape[1] + max_new_tokens) if use_cache else None
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        fresh = kv is None or step == 0
        inputs = model.prepare(sequence if fresh else sequence[:, -1:], mask, prefix_lengths=prefix if fresh else None,
                               cache=kv, check_ids=False)
        hidden, _ = model.hidden(inputs, memory, memory_padding)
        token = next_token(model.logits(hidden, -1), do_sample, temperature, top_k, top_p, generator)
        token = torch.where(finished, torch.full_like(token, pad), token)
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        if eos is not None:
            finished |= token == eos
            if bool(finished.all()):
                break
    return sequence

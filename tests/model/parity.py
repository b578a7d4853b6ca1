"""Shared checks that an llmlab model equals its Hugging Face original: logits, export round trip, generation."""

from __future__ import annotations

import torch

import llmlab

ATOL = 1e-4


def right_padded_batch(vocab_size: int, length: int = 12, pad_last: int = 4, seed: int = 0):
    """Two sequences of random ids; the second is right-padded over its last pad_last positions."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (2, length), generator=generator)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - pad_last:] = 0
    return ids, mask


def perturb_vectors(hf_model, std: float = 0.1, seed: int = 0):
    """Add noise to every 1-D parameter (norm weights and biases, linear biases) so a swapped mapping shows in logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in hf_model.parameters():
            if parameter.ndim == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * std)
    return hf_model


def max_diff_unpadded(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest absolute difference over positions where mask is 1."""
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


def hf_logits(hf_model, ids, mask, decoder_ids=None, decoder_mask=None):
    """Logits of a transformers model (hidden states for base models without a head)."""
    with torch.no_grad():
        if decoder_ids is not None:
            out = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                           decoder_attention_mask=decoder_mask)
        else:
            out = hf_model(input_ids=ids, attention_mask=mask)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def our_logits(model, ids, mask, decoder_ids=None, decoder_mask=None):
    """Logits of an llmlab model (final hidden states when it has no LM head)."""
    with torch.no_grad():
        if decoder_ids is not None:
            out = model(ids, attention_mask=mask, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask)
        else:
            out = model(ids, attention_mask=mask)
    return out.logits if out.logits is not None else out.hidden_states


def check_parity(hf_model, tmp_path, seq_len: int = 12, generate: bool = True, atol: float = ATOL,
                 recompute: bool = True):
    """Load hf_model's saved directory with llmlab.load; compare logits, the HF export, and greedy generation.

    recompute=False skips the cache-vs-recomputation check, for models whose outputs depend on how many tokens run
    at once (MoE expert capacity counted per sequence)."""
    hf_model = hf_model.eval()
    hf_dir, export_dir = tmp_path / "hf", tmp_path / "export"
    hf_model.save_pretrained(hf_dir)
    model = llmlab.load(hf_dir)
    vocab = hf_model.config.vocab_size
    ids, mask = right_padded_batch(vocab, seq_len)
    encoder_decoder = model.config.arch == "encoder_decoder"
    decoder_ids, decoder_mask = (right_padded_batch(vocab, seq_len - 3, 2, seed=1) if encoder_decoder else (None, None))
    expected = hf_logits(hf_model, ids, mask, decoder_ids, decoder_mask)
    ours = our_logits(model, ids, mask, decoder_ids, decoder_mask)
    check_mask = decoder_mask if encoder_decoder else mask
    assert ours.shape == expected.shape
    diff = max_diff_unpadded(ours, expected, check_mask)
    assert diff <= atol, f"llmlab vs transformers logits differ by {diff}"

    llmlab.save(model, export_dir, format="hf")
    reloaded = type(hf_model).from_pretrained(export_dir).eval()
    round_trip = hf_logits(reloaded, ids, mask, decoder_ids, decoder_mask)
    diff = max_diff_unpadded(round_trip, expected, check_mask)
    assert diff <= atol, f"exported checkpoint reloaded in transformers differs by {diff}"

    if generate:
        check_generation(hf_model, model, ids[:1, :6], recompute=recompute)
    return model


def check_generation(hf_model, model, prompt: torch.Tensor, new_tokens: int = 20, recompute: bool = True):
    """Greedy decoding with the KV cache equals full recomputation and transformers' generate."""
    cached = model.generate(prompt, max_new_tokens=new_tokens)
    if recompute:
        recomputed = model.generate(prompt, max_new_tokens=new_tokens, use_cache=False)
        assert torch.equal(cached, recomputed), "KV-cache generation differs from full recomputation"
    with torch.no_grad():
        expected = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                     do_sample=False, num_beams=1)
    if model.config.arch == "encoder_decoder":
        assert torch.equal(cached, expected), f"generation differs from transformers: {cached} vs {expected}"
    else:
        assert torch.equal(cached, expected), f"generation differs from transformers: {cached} vs {expected}"

"""GPU code paths: the CUDA model equals the CPU one, and cached decoding equals recomputation there too."""

import pytest
import torch

from llmlab.model import Model, presets

pytestmark = pytest.mark.gpu

FAMILIES = ["llama", "gpt2", "bloom", "t5", "switch", "bert", "gpt_neo", "falcon"]


def _batch(config, length=16):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (2, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, -5:] = 0
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_logits_equal_cpu(family):
    torch.manual_seed(0)
    model = Model(presets.get(family, "tiny")).eval()
    ids, mask = _batch(model.config)
    kwargs = {"decoder_input_ids": ids[:, :8]} if model.config.arch == "encoder_decoder" else {}
    with torch.no_grad():
        cpu = model(ids, attention_mask=mask, **kwargs)
        gpu = model.cuda()(ids.cuda(), attention_mask=mask.cuda(), **{k: v.cuda() for k, v in kwargs.items()})
    expected = cpu.logits if cpu.logits is not None else cpu.hidden_states
    got = (gpu.logits if gpu.logits is not None else gpu.hidden_states).cpu()
    keep = mask.bool() if model.config.arch != "encoder_decoder" else torch.ones(2, 8, dtype=torch.bool)
    assert (got[keep] - expected[keep]).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", ["llama", "gpt2", "bloom", "t5", "gpt_neo"])
def test_cuda_cached_generation_equals_recomputation(family):
    torch.manual_seed(0)
    model = Model(presets.get(family, "tiny")).eval().cuda()
    prompt = _batch(model.config, 6)[0].cuda()
    cached = model.generate(prompt, max_new_tokens=16)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=16, use_cache=False))


def test_bf16_training_step_is_finite_and_close_to_fp32():
    torch.manual_seed(0)
    model = Model(presets.get("llama", "tiny")).cuda()
    ids, _ = _batch(model.config, 64)
    ids = ids.cuda()
    fp32 = model(ids, labels=ids).loss
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = model(ids, labels=ids).loss
    bf16.backward()
    assert torch.isfinite(bf16)
    assert abs(bf16.item() - fp32.item()) < 0.05
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

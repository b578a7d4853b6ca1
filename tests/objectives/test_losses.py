"""The shared loss functions against transformers' own losses on the same weights, and worked by hand."""

import math

import pytest
import torch

from llmlab.model import Model, presets
from llmlab.model.hf import save_hf
from llmlab.objectives.losses import IGNORE_INDEX, language_model_loss, token_logprobs, z_loss

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name, auto", [("gpt2", "AutoModelForCausalLM"), ("t5", "AutoModelForSeq2SeqLM"),
                                        ("bert", "AutoModelForMaskedLM")])
def test_summed_loss_over_count_is_transformers_mean_loss(name, auto, tmp_path):
    torch.manual_seed(0)
    model = Model(presets.get(name, "tiny", vocab_size=97, dropout=0.0)).eval()
    save_hf(model, tmp_path)
    reference = getattr(transformers, auto).from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 97, (2, 10))
    labels = ids.clone()
    labels[0, :4] = IGNORE_INDEX  # unlabelled positions count for neither
    batch = {"input_ids": ids, "labels": labels}
    with torch.no_grad():
        summed, count, metrics = language_model_loss(model, batch)
        expected = reference(input_ids=ids, labels=labels).loss
    shifted = name == "gpt2"
    assert int(count) == int((labels[:, 1:] if shifted else labels).ne(IGNORE_INDEX).sum())
    assert (summed / count).item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["cross_entropy"].item() == pytest.approx(summed.item(), rel=1e-6)


def test_z_loss_and_the_moe_auxiliary_loss_count_per_labelled_position():
    torch.manual_seed(0)
    model = Model(presets.get("switch", "tiny", vocab_size=97, dropout=0.0, router_jitter=0.0)).eval()
    ids = torch.randint(3, 97, (2, 8))
    batch = {"input_ids": ids, "labels": ids}
    with torch.no_grad():
        plain, count, metrics = language_model_loss(model, batch)
        weighted, _, _ = language_model_loss(model, batch, z_loss_weight=0.1)
        output = model(ids, decoder_input_ids=model.shift_right(ids))
    assert metrics["aux_loss"].item() == pytest.approx(output.aux_loss.item() * int(count), rel=1e-5)
    assert (weighted - plain).item() == pytest.approx(0.1 * z_loss(output.logits).item() * int(count), rel=1e-4)


def test_token_logprobs_worked_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), math.log(2.0)]]])
    got = token_logprobs(logits, torch.tensor([[1, IGNORE_INDEX]]))
    assert got[0, 0].item() == pytest.approx(math.log(3 / 4)) and got[0, 1].item() == 0.0


@pytest.mark.parametrize("preset", ["llama", "prefix_llama", "t5_v1_1"])
def test_the_head_on_labelled_positions_only_gives_the_full_heads_loss_and_gradient(preset):
    torch.manual_seed(0)
    model = Model(presets.get(preset, "tiny", vocab_size=50, d_model=32, n_layers=2, n_heads=2, d_ff=64))
    ids = torch.randint(3, 50, (3, 12))
    labels = ids.clone()
    labels[:, :7] = IGNORE_INDEX  # a prompt without loss, as in fine-tuning
    labels[1, 10:] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    results = []
    for only in (False, True):
        model.zero_grad()
        summed, count, _ = language_model_loss(model, batch, labelled_logits_only=only)
        summed.backward()
        results.append((summed.detach(), count, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (full, full_count, full_grads), (only, only_count, only_grads) = results
    assert int(full_count) == int(only_count)
    torch.testing.assert_close(only, full, rtol=1e-6, atol=1e-6)
    for a, b in zip(only_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

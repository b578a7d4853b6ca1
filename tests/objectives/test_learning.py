"""A tiny model of each matching family learns on the bundled corpus under each objective (held-out loss falls)."""

import pytest
import torch

from llmlab.data.corpus import bundled_corpus
from llmlab.model import presets
from llmlab.model.transformer import Model
from llmlab.objectives import UL2, GLMBlankInfilling, MaskedLM, PrefixLM, SpanCorruption, causal_lm, objective_batches
from llmlab.train.loop import TrainConfig, train

VOCAB = 1024  # the tiny presets' vocabulary: bytes 0–255 below, special tokens counted down from the top
MASK, SOP, EOP = VOCAB - 300, VOCAB - 301, VOCAB - 302
MODES = {"R": VOCAB - 200, "S": VOCAB - 199, "X": VOCAB - 198}
STEPS, BATCH, SEQ = 30, 8, 64

# name → (tiny config, objective, learning rate, the least fall of the held-out loss in nats after STEPS steps);
# T5 takes the larger rate it was trained with (1e-2, Raffel et al. 2020 §3.1.2).
CASES = {
    "causal_lm": (presets.llama("tiny"), causal_lm, 3e-3, 3.0),
    "prefix_lm": (presets.prefix_llama("tiny"), PrefixLM(), 3e-3, 3.0),
    "span_corruption": (presets.t5("tiny", eos_token_id=1),
                        SpanCorruption(eos_token_id=1, vocab_size=VOCAB), 1e-2, 2.0),
    "ul2": (presets.t5("tiny", eos_token_id=1), UL2(eos_token_id=1, mode_token_ids=MODES, vocab_size=VOCAB), 1e-2, 1.8),
    "ul2_decoder": (presets.prefix_llama("tiny"),
                    UL2(eos_token_id=1, mode_token_ids=MODES, vocab_size=VOCAB, decoder_only=True), 3e-3, 2.5),
    "glm": (presets.glm("tiny"), GLMBlankInfilling(MASK, SOP, EOP), 3e-3, 3.0),
    "mlm": (presets.bert("tiny"), MaskedLM(MASK, vocab_size=256), 3e-3, 2.5),
}


@pytest.fixture(scope="module")
def byte_stream():
    return torch.tensor(list(bundled_corpus(max_chars=200_000).encode()), dtype=torch.long)


def held_out_loss(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.parametrize("name", list(CASES))
def test_tiny_model_learns_under_each_objective(name, byte_stream):
    config, objective, lr, margin = CASES[name]
    torch.manual_seed(0)
    model = Model(config)
    split = int(0.9 * len(byte_stream))
    held_out = next(objective_batches(objective, byte_stream[split:], 16, SEQ, torch.Generator().manual_seed(1)))
    before = held_out_loss(model, held_out)
    batches = objective_batches(objective, byte_stream[:split], BATCH, SEQ, torch.Generator().manual_seed(0))
    train(model, batches, TrainConfig(steps=STEPS, lr=lr, warmup=4, seed=0), progress=False)
    after = held_out_loss(model, held_out)
    print(f"{name}: held-out loss {before:.3f} → {after:.3f}")
    assert before - after > margin


def logits_change(model, batch, changed_position, observed_position):
    """Whether replacing the token at changed_position changes the logits at observed_position (row 0)."""
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    changed["input_ids"][0, changed_position] = 7
    with torch.no_grad():
        before, after = model(**batch).logits[0, observed_position], model(**changed).logits[0, observed_position]
    return not torch.allclose(before, after)


@pytest.mark.parametrize("preset", [presets.prefix_llama, presets.llama])
def test_prefix_lm_attends_bidirectionally_in_the_prefix_and_causally_after(preset):
    torch.manual_seed(0)
    model = Model(preset("tiny")).eval()
    batch = PrefixLM(prefix_length=5)(torch.arange(40, 50)[None])
    assert logits_change(model, batch, changed_position=4, observed_position=0)
    assert not logits_change(model, batch, changed_position=5, observed_position=4)
    assert logits_change(model, batch, changed_position=5, observed_position=6)


def test_glm_attends_bidirectionally_in_part_a_and_causally_in_part_b():
    torch.manual_seed(0)
    model = Model(presets.glm("tiny")).eval()
    batch = GLMBlankInfilling(MASK, SOP, EOP)(torch.arange(40, 80)[None], torch.Generator().manual_seed(0))
    prefix = int(batch["prefix_lengths"][0])
    assert logits_change(model, batch, changed_position=prefix - 1, observed_position=0)
    assert not logits_change(model, batch, changed_position=prefix + 2, observed_position=prefix + 1)
    assert logits_change(model, batch, changed_position=prefix + 2, observed_position=prefix + 3)


@pytest.mark.parametrize("name", list(CASES))
def test_each_objective_is_deterministic_given_the_generator(name, byte_stream):
    objective = CASES[name][1]
    first, second = (next(objective_batches(objective, byte_stream, 4, SEQ, torch.Generator().manual_seed(5)))
                     for _ in range(2))
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)

"""Response log-probabilities against transformers' logits on the same weights, and independent of padding; the
helpers at the top (tiny models, a character encoder, a hand-built FinetuneContext) serve the other preference tests."""

import pytest
import torch

from llmlab.adapt.logprobs import padded_batch, response_logprobs, response_token_logprobs
from llmlab.adapt.method import FinetuneContext
from llmlab.errors import ConfigError
from llmlab.model import Model, presets
from llmlab.model.hf import save_hf
from llmlab.objectives.losses import IGNORE_INDEX
from llmlab.train.loop import TrainConfig

VOCAB, EOS = 48, 2


def tiny_model(name: str = "llama", seed: int = 0, **overrides) -> Model:
    """A one-layer model of width 32 of the family, dropout off."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=VOCAB, d_model=32, n_heads=2, d_ff=64, n_layers=1, max_seq_len=64, dropout=0.0,
                  eos_token_id=EOS)
    return Model(presets.get(name, "tiny", **{**fields, **overrides}))


def char_ids(text: str) -> list[int]:
    """One token per character, ids 3 to VOCAB - 1 (0 to 2 stay free for pad, BOS and EOS)."""
    return [3 + ord(character) % (VOCAB - 3) for character in text]


def encoder_for(arch: str):
    """context.encode's contract for arch: (input_ids, labels), the response and EOS labelled."""
    def encode(prompt: str, response: str) -> tuple[list[int], list[int]]:
        response_ids = char_ids(response) + [EOS]
        if arch == "encoder_decoder":
            return char_ids(prompt), response_ids
        return char_ids(prompt) + response_ids, [IGNORE_INDEX] * len(prompt) + response_ids
    return encode


def make_context(model, examples, held_out=(), run_dir=None, params=None, **fields) -> FinetuneContext:
    """The FinetuneContext `llmlab finetune` would hand a method, built by hand."""
    return FinetuneContext(
        model=model, tokenizer=None, params=dict(params or {}), examples=list(examples), held_out=list(held_out),
        encode=encoder_for(model.config.arch), encode_prompt=char_ids, train=TrainConfig(device="cpu"),
        run_dir=run_dir, device=torch.device("cpu"), seed=0, **fields,
    )  # fmt: skip


def alone_logprob(logits: torch.Tensor, ids: list[int], labels: list[int], shifted: bool) -> float:
    """Σ log p(label) over the labelled positions of one unpadded sequence's logits [length, vocab], by hand."""
    logprobs = logits.double().log_softmax(-1)
    targets = labels[1:] if shifted else labels
    rows = logprobs[:-1] if shifted else logprobs
    return sum(float(rows[t, label]) for t, label in enumerate(targets) if label != IGNORE_INDEX)


EXAMPLES = [("ab", "cde"), ("a longer prompt", "x"), ("q", "a longer response")]


def test_decoder_logprobs_equal_transformers_inside_a_padded_batch(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_model("llama").eval()
    save_hf(model, tmp_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    encode = encoder_for("decoder")
    sequences = [encode(prompt, response) for prompt, response in EXAMPLES]
    with torch.no_grad():
        sums, counts = response_logprobs(model, padded_batch(sequences, pad_id=0))
        expected = [alone_logprob(reference(torch.tensor([ids])).logits[0], ids, labels, shifted=True)
                    for ids, labels in sequences]
    assert sums.dtype == torch.float32
    assert counts.tolist() == [len(response) + 1 for _, response in EXAMPLES]
    assert sums.tolist() == pytest.approx(expected, abs=1e-5)


def test_encoder_decoder_logprobs_equal_transformers_inside_a_padded_batch(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_model("t5_v1_1", eos_token_id=1).eval()
    save_hf(model, tmp_path)
    reference = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    encode = encoder_for("encoder_decoder")
    sequences = [encode(prompt, response) for prompt, response in EXAMPLES]
    with torch.no_grad():
        sums, counts = response_logprobs(model, padded_batch(sequences, pad_id=0))
        expected = [alone_logprob(reference(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).logits[0],
                                  ids, labels, shifted=False) for ids, labels in sequences]
    assert counts.tolist() == [len(response) + 1 for _, response in EXAMPLES]
    assert sums.tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", ["llama", "prefix_llama", "gpt2", "t5_v1_1"])
def test_a_sequence_alone_equals_it_inside_a_right_padded_batch(name):
    model = tiny_model(name).eval()
    encode = encoder_for(model.config.arch)
    sequences = [encode(prompt, response) for prompt, response in EXAMPLES]
    with torch.no_grad():
        batched, _ = response_logprobs(model, padded_batch(sequences, pad_id=0))
        alone = [response_logprobs(model, padded_batch([sequence], pad_id=0))[0].item() for sequence in sequences]
    assert batched.tolist() == pytest.approx(alone, abs=1e-5)


def test_prefix_decoder_sees_its_prompt_bidirectionally():
    model = tiny_model("prefix_llama").eval()
    ids, labels = encoder_for("prefix_decoder")("abc", "de")
    batch = padded_batch([(ids, labels)], pad_id=0)
    with torch.no_grad():
        per_token = response_token_logprobs(model, batch)
        logits = model(batch["input_ids"], prefix_lengths=torch.tensor([3])).logits[0]
    assert per_token[0].sum().item() == pytest.approx(alone_logprob(logits, ids, labels, shifted=True), abs=1e-5)


def test_padded_batch_pads_right_with_unlabelled_positions():
    batch = padded_batch([([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


def test_an_encoder_only_model_has_no_response_logprobs():
    model = tiny_model("bert").eval()
    with pytest.raises(ConfigError, match="encoder-only"):
        response_logprobs(model, padded_batch([([5, 6], [5, 6])], pad_id=0))

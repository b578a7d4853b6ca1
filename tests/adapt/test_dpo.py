"""DPO: each loss type against TRL's DPOTrainer on the same log-probabilities, the one policy forward against
log-probabilities worked per sequence, the cached reference (written once, reused on resume, recomputed when stale,
from the adapter-free model under an adapter or from another checkpoint), and training on a tiny model."""

import contextlib
import copy
import math
import random
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import llmlab
from llmlab.adapt import dpo
from llmlab.adapt.dpo import REFERENCE_FILE, dpo_loss, dpo_losses
from llmlab.adapt.reward import Pair, collate_pairs
from llmlab.errors import CheckpointError, ConfigError, DataError
from llmlab.train.checkpoint import latest_checkpoint
from llmlab.train.loop import Trainer, TrainConfig
from tests.adapt.test_logprobs import alone_logprob, encoder_for, make_context, tiny_model

LOSSES = [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.2)]
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


def random_pairs(pairs: int, length: int, seed: int):
    """Per-token policy log-probabilities [2·pairs, length − 1] (shifted, zero off the completion), the completion
    mask [2·pairs, length] (TRL's layout: chosen rows, then rejected) and reference sums [pairs] × 2."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2 * pairs, length, dtype=torch.long)
    for row in range(2 * pairs):
        start = int(torch.randint(1, length // 2, (), generator=generator))
        mask[row, start:start + int(torch.randint(1, length // 2, (), generator=generator))] = 1
    per_token = -torch.rand(2 * pairs, length - 1, generator=generator) * 4 * mask[:, 1:]
    references = -torch.rand(2, pairs, generator=generator) * 4 * mask.view(2, pairs, -1).sum(-1)
    return per_token, mask, references


def trl_dpo(per_token, mask, references, loss_type, beta, label_smoothing):
    """TRL's DPOTrainer._compute_loss with precomputed reference log-probabilities, on a stand-in self and a model
    returning the given per-token log-probabilities."""
    from trl import DPOTrainer

    identity = lambda tensor: tensor  # noqa: E731  (one process: gathering changes nothing)
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=SimpleNamespace(device=torch.device("cpu"),
                                                                          gather_for_metrics=identity, gather=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token).bool())
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": references[0], "ref_rejected_logps": references[1]}
    loss = DPOTrainer._compute_loss(stub, lambda **_: outputs, inputs, False)
    return loss, {name: values[0] for name, values in stub._metrics["train"].items()}


@pytest.mark.parametrize("loss_type, label_smoothing", LOSSES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_and_rewards_equal_trl(loss_type, label_smoothing, beta, monkeypatch):
    pytest.importorskip("trl")
    pairs = 5
    per_token, mask, references = random_pairs(pairs, 12, seed=hash((loss_type, beta)) % 1000)
    expected, trl_metrics = trl_dpo(per_token, mask, references, loss_type, beta, label_smoothing)
    sums, counts = per_token.sum(-1), mask.sum(-1)
    losses = dpo_losses(*sums.chunk(2), *references, loss_type, beta, label_smoothing, *counts.chunk(2))
    assert losses.mean().item() == pytest.approx(expected.item(), abs=1e-6)
    # dpo_loss, the Trainer's loss, on the same numbers: its metrics (summed per pair) over the count are TRL's means
    monkeypatch.setattr(dpo, "response_logprobs", lambda model, batch: (sums, counts))
    batch = {"input_ids": torch.zeros(pairs, 2, 1, dtype=torch.long), "reference_logps": references.T}
    summed, count, metrics = dpo_loss(None, batch, beta, loss_type, label_smoothing)
    assert (summed / count).item() == pytest.approx(expected.item(), abs=1e-6)
    for name in METRICS:
        assert (metrics[name] / count).item() == pytest.approx(trl_metrics[name], abs=1e-6), name


def test_losses_worked_by_hand():
    # policy − reference log-ratios: chosen 1.0, rejected −1.0, so β·Δ = 0.2 at β = 0.1
    args = torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([0.0])
    assert dpo_losses(*args, "sigmoid", 0.1).item() == pytest.approx(math.log(1 + math.exp(-0.2)), rel=1e-6)
    assert dpo_losses(*args, "hinge", 0.1).item() == pytest.approx(0.8, rel=1e-6)
    robust = (0.9 * math.log(1 + math.exp(-0.2)) - 0.1 * math.log(1 + math.exp(0.2))) / 0.8
    assert dpo_losses(*args, "robust", 0.1, 0.1).item() == pytest.approx(robust, rel=1e-6)
    # IPO on per-token log-ratios: 1/2 − (−1/4) = 0.75 against 1/(2β) = 5
    ipo = dpo_losses(*args, "ipo", 0.1, 0.0, torch.tensor([2]), torch.tensor([4]))
    assert ipo.item() == pytest.approx((0.75 - 5) ** 2, rel=1e-6)


def preference_examples(count: int, seed: int):
    """Pairs a policy can learn: the chosen response repeats 'a', the rejected one 'z'."""
    rng = random.Random(seed)
    return [{"prompt": "".join(rng.choice("bcdef") for _ in range(rng.randint(1, 4))),
             "chosen": "a" * rng.randint(1, 5), "rejected": "z" * rng.randint(1, 5)} for _ in range(count)]


def assert_close(actual, expected, atol=1e-5):
    """Tensors (or nested lists) equal to atol."""
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def cached(run_dir) -> dict[str, torch.Tensor]:
    """The run directory's cached reference log-probabilities [pairs, 2], in the examples' order."""
    return load_file(run_dir / REFERENCE_FILE)


def alone(model, example) -> list[float]:
    """The summed response log-probabilities (chosen, rejected) of one example, each sequence alone, by hand."""
    encode, seq2seq = encoder_for(model.config.arch), model.config.arch == "encoder_decoder"
    values = []
    with torch.no_grad():
        for name in ("chosen", "rejected"):
            ids, labels = encode(example["prompt"], example[name])
            decoder = {"decoder_input_ids": model.shift_right(torch.tensor([labels]))} if seq2seq else {}
            logits = model(torch.tensor([ids]), **decoder).logits[0]
            values.append(alone_logprob(logits, ids, labels, shifted=not seq2seq))
    return values


class CountCalls:
    """Counts a module's forward calls."""

    def __init__(self, module: nn.Module):
        self.calls = 0
        module.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))


@pytest.mark.parametrize("name", ["llama", "t5_v1_1"])
def test_one_policy_forward_gives_the_loss_and_rewards_of_each_sequence_alone(name):
    model = tiny_model(name).eval()
    examples = preference_examples(3, 0)
    reference_model = tiny_model(name, seed=1).eval()
    encode = encoder_for(model.config.arch)
    pairs = []
    for example in examples:
        pairs.append(Pair(encode(example["prompt"], example["chosen"]), encode(example["prompt"], example["rejected"]),
                          reference=alone(reference_model, example)))
    counter = CountCalls(model)
    summed, count, metrics = dpo_loss(model, collate_pairs(pairs, pad_id=0), beta=0.5)
    assert counter.calls == 1
    policy = torch.tensor([alone(model, example) for example in examples], dtype=torch.float64)
    reference = torch.tensor([pair.reference for pair in pairs], dtype=torch.float64)
    rewards = 0.5 * (policy - reference)
    expected = -torch.nn.functional.logsigmoid(rewards[:, 0] - rewards[:, 1])
    assert summed.item() == pytest.approx(expected.sum().item(), abs=1e-5) and int(count) == 3
    assert metrics["rewards/chosen"].item() == pytest.approx(rewards[:, 0].sum().item(), abs=1e-5)
    assert metrics["rewards/margins"].item() == pytest.approx((rewards[:, 0] - rewards[:, 1]).sum().item(), abs=1e-5)
    assert metrics["rewards/accuracies"].item() == float((rewards[:, 0] > rewards[:, 1]).sum())


def train_config(steps, **fields):
    """A short constant-rate run on the CPU."""
    return TrainConfig(steps=steps, lr=5e-3, schedule="constant", weight_decay=0.0, device="cpu", **fields)


def test_reference_logps_are_computed_once_cached_and_reused_on_resume(tmp_path):
    initial = tiny_model("llama")
    snapshot = copy.deepcopy(initial.state_dict())
    examples, held_out = preference_examples(10, 0), preference_examples(4, 1)
    counter = CountCalls(initial)
    parts = dpo.build(make_context(initial, examples, held_out, tmp_path, params={"batch_size": 4}))
    assert counter.calls == 3 + 1  # ceil(10 / 4) training batches and one held-out batch, no grad
    cache = tmp_path / REFERENCE_FILE
    written = cache.stat().st_mtime_ns
    assert_close(cached(tmp_path)["train"], [alone(initial, example) for example in examples])
    assert cached(tmp_path)["held_out"].shape == (4, 2) and cached(tmp_path)["train_index"].tolist() == list(range(10))
    trainer = Trainer(initial, train_config(2, checkpoint_every=2), parts.batches, loss_fn=parts.loss_fn,
                      run_dir=tmp_path, progress=False)
    trainer.fit()

    resumed_model = tiny_model("llama")
    resumed_model.load_state_dict(snapshot)  # `llmlab finetune --resume` starts from the initial model again
    counter = CountCalls(resumed_model)
    again = dpo.build(make_context(resumed_model, examples, held_out, tmp_path, params={"batch_size": 4}))
    assert counter.calls == 0 and cache.stat().st_mtime_ns == written
    assert any("reused" in note for note in again.notes)
    resumed = Trainer(resumed_model, train_config(4), again.batches, loss_fn=again.loss_fn, run_dir=tmp_path,
                      progress=False)
    resumed.resume(latest_checkpoint(tmp_path / "checkpoints"))
    resumed_losses = resumed.fit()

    straight_model = tiny_model("llama")
    straight_model.load_state_dict(snapshot)
    straight = dpo.build(make_context(straight_model, examples, held_out, tmp_path / "other", params={"batch_size": 4}))
    losses = Trainer(straight_model, train_config(4), straight.batches, loss_fn=straight.loss_fn,
                     progress=False).fit()
    assert resumed_losses == pytest.approx(losses[2:], abs=1e-6)


def test_a_stale_cache_is_recomputed_never_reused(tmp_path):
    model = tiny_model("llama")
    examples = preference_examples(6, 0)
    dpo.build(make_context(model, examples, run_dir=tmp_path))
    counter = CountCalls(model)
    more = dpo.build(make_context(model, [*examples, *preference_examples(1, 5)], run_dir=tmp_path))
    assert counter.calls > 0 and any("recomputed" in note for note in more.notes)
    with torch.no_grad():
        model.embed.tokens.weight[5] += 1.0  # other reference weights
    calls = counter.calls
    changed = dpo.build(make_context(model, examples, run_dir=tmp_path))
    assert counter.calls > calls
    assert_close(cached(tmp_path)["train"][0], alone(model, examples[0]))
    rows = cached(tmp_path)["train"].tolist()
    assert all(row in rows for row in changed.batches.batch(0)["reference_logps"].tolist())
    (tmp_path / REFERENCE_FILE).write_bytes(b"damaged")
    calls = counter.calls
    dpo.build(make_context(model, examples, run_dir=tmp_path))
    assert counter.calls > calls


def with_adapter(model: nn.Module):
    """A stand-in for LoRA: a trainable bias on the logits (the base frozen), and the context that switches it off."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.adapter = nn.Parameter(torch.randn(model.config.vocab_size))
    state = {"on": True}
    model.head.register_forward_hook(lambda module, inputs, output: output + model.adapter if state["on"] else output)

    @contextlib.contextmanager
    def disabled():
        state["on"] = False
        try:
            yield
        finally:
            state["on"] = True
    return disabled


def test_under_an_adapter_the_reference_is_the_model_with_the_adapter_off(tmp_path):
    base = tiny_model("llama")
    examples = preference_examples(4, 0)
    expected = [alone(base, example) for example in examples]
    model = copy.deepcopy(base)
    disabled = with_adapter(model)
    dpo.build(make_context(model, examples, run_dir=tmp_path, params={"batch_size": 4}, adapter_disabled=disabled))
    references = cached(tmp_path)["train"]
    assert_close(references, expected)
    with pytest.raises(AssertionError):
        assert_close(references, [alone(model, example) for example in examples], atol=1e-3)
    with torch.no_grad():
        model.adapter.add_(1.0)  # training the adapter leaves the reference, and its cache, as they were
    counter = CountCalls(model)
    dpo.build(make_context(model, examples, run_dir=tmp_path, params={"batch_size": 4}, adapter_disabled=disabled))
    assert counter.calls == 0


def test_the_reference_can_be_another_checkpoint(tmp_path):
    model, other = tiny_model("llama"), tiny_model("llama", seed=7)
    llmlab.save(other, tmp_path / "reference")
    examples = preference_examples(3, 0)
    parts = dpo.build(make_context(model, examples, run_dir=tmp_path / "run",
                                   params={"reference": str(tmp_path / "reference"), "batch_size": 3}))
    assert_close(cached(tmp_path / "run")["train"], [alone(other, example) for example in examples])
    in_batches = parts.batches.batch(0)["reference_logps"].tolist()
    assert sorted(in_batches) == sorted(cached(tmp_path / "run")["train"].tolist())
    llmlab.save(tiny_model("llama", vocab_size=64), tmp_path / "wide")
    with pytest.raises(CheckpointError, match="vocabulary"):
        dpo.build(make_context(model, examples, run_dir=tmp_path / "run2",
                               params={"reference": str(tmp_path / "wide")}))
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        dpo.build(make_context(model, examples, run_dir=tmp_path / "run3", params={"reference": str(tmp_path / "no")}))


@pytest.mark.parametrize("loss_type, label_smoothing", LOSSES)
def test_the_loss_falls_on_a_tiny_model(loss_type, label_smoothing, tmp_path):
    model = tiny_model("llama")
    params = {"loss_type": loss_type, "label_smoothing": label_smoothing, "batch_size": 8, "beta": 0.5}
    parts = dpo.build(make_context(model, preference_examples(16, 0), preference_examples(8, 1), tmp_path, params))
    before = parts.evaluate(model)
    losses = Trainer(model, train_config(10), parts.batches, loss_fn=parts.loss_fn, progress=False).fit()
    after = parts.evaluate(model)
    assert sum(losses[-3:]) / 3 < losses[0]
    assert before["rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as its reference
    assert after["rewards/margins"] > 0 and after["rewards/accuracies"] > 0.5


def test_pairs_longer_than_max_length_are_left_out_and_said_so(tmp_path):
    examples = preference_examples(3, 0)
    examples.insert(1, {"prompt": "a long prompt", "chosen": "a long answer", "rejected": "z"})
    parts = dpo.build(make_context(tiny_model("llama"), examples, run_dir=tmp_path, params={"max_length": 16}))
    assert cached(tmp_path)["train_index"].tolist() == [0, 2, 3]
    assert any("left out 1 training" in note for note in parts.notes)


def test_bad_pairs_and_parameters_are_one_sentence_errors(tmp_path):
    model = tiny_model("llama")
    same = [*preference_examples(2, 0), {"prompt": "p", "chosen": "same", "rejected": "same"}]
    with pytest.raises(DataError, match="example 2 has the same chosen and rejected"):
        dpo.build(make_context(model, same, run_dir=tmp_path))
    examples = preference_examples(2, 0)
    for params, field in [({"loss_type": "kto"}, "loss_type"), ({"beta": 0}, "beta"),
                          ({"label_smoothing": 0.1}, "label_smoothing"),
                          ({"loss_type": "robust", "label_smoothing": 0.5}, "label_smoothing")]:
        with pytest.raises(ConfigError, match=f"method.{field}"):
            dpo.build(make_context(model, examples, run_dir=tmp_path, params=params))
    assert not (tmp_path / REFERENCE_FILE).exists()

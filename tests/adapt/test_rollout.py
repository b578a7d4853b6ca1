"""llmlab.adapt.rollout and llmlab.adapt.rewards: sampled completions laid out as generate returned them, their
log-probabilities equal to generate's own, seeds, the resumable batch iterator, the frozen reference, and the reward
functions on hand-made completions. The helpers here (a word-level tokenizer, a tiny model, a context) serve
test_grpo.py and test_ppo.py too."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from llmlab.adapt.method import FinetuneContext
from llmlab.adapt.rewards import (
    Scorer, exact_match, exact_text, load_reward_function, scorer_from_params, strict_match,
)  # fmt: skip
from llmlab.adapt.rollout import (
    RolloutBatches, check_rollout_model, completion_logprobs, reference_logprobs, sample, sampling_config,
)  # fmt: skip
from llmlab.errors import ConfigError, DataError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import generate
from llmlab.model import Model, presets

WORDS = ["<pad>", "<eos>", *"abcdefghij"]
PAD, EOS = 0, 1
PROMPTS = ["b c", "d e f", "g", "h i"]


def word_tokenizer() -> Tokenizer:
    """One token per letter a-j (space-separated), <pad> = 0 and <eos> = 1; decoding joins tokens with spaces."""
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(["<pad>", "<eos>"])
    return tokenizer


def tiny_model(name: str = "llama", seed: int = 0, **overrides) -> Model:
    """A one-layer model of width 32 over WORDS, EOS = <eos>."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=len(WORDS), d_model=32, n_heads=2, n_layers=1, d_ff=64, max_seq_len=64, dropout=0.0,
                  eos_token_id=EOS, pad_token_id=PAD)
    return Model(presets.get(name, "tiny", **{**fields, **overrides}))


def make_context(model, params: dict, examples: list[dict] | None = None, held_out=(), seed: int = 0,
                 adapter_disabled=None) -> FinetuneContext:
    """A FinetuneContext as `llmlab finetune` builds it, by hand: prompts encoded by the word tokenizer."""
    tokenizer = word_tokenizer()
    examples = examples if examples is not None else [{"prompt": prompt} for prompt in PROMPTS]
    return FinetuneContext(model=model, tokenizer=tokenizer, params=params, examples=examples,
                           held_out=list(held_out), encode=None, encode_prompt=lambda p: tokenizer.encode(p).ids,
                           train=None, run_dir=Path("unused"), device=torch.device("cpu"), seed=seed,
                           adapter_disabled=adapter_disabled)


def starts_with_a(prompts, completions, **columns) -> list[float]:
    """1 for a completion whose first word is "a"."""
    return [float(text.split()[:1] == ["a"]) for text in completions]


def constant_reward(prompts, completions, **columns) -> list[float]:
    """0.5 for every completion (loaded by name in a test)."""
    return [0.5] * len(completions)


def ids(texts: list[str]) -> list[list[int]]:
    tokenizer = word_tokenizer()
    return [tokenizer.encode(text).ids for text in texts]


def test_a_rollout_lays_out_what_generate_returned():
    model = tiny_model()
    prompts = ids(PROMPTS)
    config = GenerationConfig(max_new_tokens=6, do_sample=True, n=2)
    rollout = sample(model, prompts, config, word_tokenizer())
    rows = [prompt for prompt in prompts for _ in range(2)]
    assert rollout.prompt_ids.shape == (8, 3) and rollout.prompt_mask.tolist()[2] == [1, 1, 1]
    for row, prompt in enumerate(rows):  # left-padded prompts, prompt-major
        assert rollout.prompt_mask[row].tolist() == [0] * (3 - len(prompt)) + [1] * len(prompt)
        assert rollout.prompt_ids[row, 3 - len(prompt):].tolist() == prompt
    for row in range(8):  # right-padded completions, ending at EOS or at max_new_tokens
        length = int(rollout.completion_mask[row].sum())
        tokens = rollout.completion_ids[row, :length].tolist()
        assert rollout.completion_mask[row].tolist() == [1] * length + [0] * (rollout.completion_ids.shape[1] - length)
        assert (tokens[-1] == EOS) == (rollout.finish_reasons[row] == "stop")
        assert EOS not in tokens[:-1] and (length == 6 or tokens[-1] == EOS)
        assert rollout.texts[row] == " ".join(WORDS[t] for t in tokens if t not in (PAD, EOS))  # special: skipped
    right, mask = rollout.right_padded()
    for row in range(8):
        real = rollout.input_ids[row][rollout.attention_mask[row].bool()].tolist()
        assert right[row, :len(real)].tolist() == real and mask[row].tolist() == [1] * len(real) + [0] * (
            mask.shape[1] - len(real))


@pytest.mark.parametrize("name", ["llama", "gpt2", "prefix_llama"])
def test_completion_logprobs_equal_generates_own(name):
    """One teacher-forced forward over the padded rows gives the log-probabilities that generate reported step by
    step through its cache; a prefix decoder's prompt is bidirectional in both."""
    model = tiny_model(name, init_std=0.2).eval()
    prompts = ids(PROMPTS)
    config = GenerationConfig(max_new_tokens=5, do_sample=True, n=2)
    with torch.random.fork_rng():
        torch.manual_seed(3)  # as sample seeds the rows below
        result = generate(model, prompts, config.replace(logprobs=0))
    rollout = sample(model, prompts, config.replace(seed=3))
    batch = {"input_ids": rollout.input_ids, "attention_mask": rollout.attention_mask,
             "completion_mask": rollout.completion_mask}
    forward = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if name == "prefix_llama":
        forward["prefix_lengths"] = torch.full((8,), rollout.prompt_ids.shape[1])
    with torch.no_grad():
        logps = completion_logprobs(model(**forward).logits, batch)
    if name == "llama":  # this draw ends some completions early, so their right padding is covered
        assert len({len(tokens) for tokens in result.tokens}) > 1
    for row, tokens in enumerate(result.tokens):
        assert rollout.completion_ids[row, :len(tokens)].tolist() == tokens
        torch.testing.assert_close(logps[row, :len(tokens)], torch.tensor(result.logprobs[row]), atol=1e-5,
                                   rtol=1e-5)
        assert logps[row, len(tokens):].abs().sum() == 0


def test_completion_logprobs_use_the_sampling_temperature():
    logits = torch.randn(1, 3, len(WORDS))
    batch = {"input_ids": torch.tensor([[2, 3, 4]]), "completion_mask": torch.tensor([[1, 1]])}
    expected = torch.stack([(logits[0, 0] / 0.5).log_softmax(-1)[3], (logits[0, 1] / 0.5).log_softmax(-1)[4]])
    torch.testing.assert_close(completion_logprobs(logits, batch, temperature=0.5)[0], expected)


def test_seeds_reproduce_rollouts_and_rows_draw_apart():
    model = tiny_model()
    config = sampling_config(model, 6, temperature=1.0, top_p=1.0)
    same_prompt = ids(["b"] * 8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = sample(model, same_prompt, config.replace(seed=7))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is untouched
    again = sample(model, same_prompt, config.replace(seed=7))
    other = sample(model, same_prompt, config.replace(seed=8))
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    assert len({tuple(row) for row in first.completion_ids.tolist()}) > 1  # rows of one prompt differ


def test_sampling_restores_train_mode_and_needs_a_decoder():
    model = tiny_model().train()
    sample(model, ids(["b"]), GenerationConfig(max_new_tokens=2, do_sample=True, seed=0))
    assert model.training
    with pytest.raises(ConfigError, match="decoder"):
        check_rollout_model(tiny_model("t5"), "grpo")


def test_the_frozen_reference_keeps_the_initial_model():
    model = tiny_model()
    reference = reference_logprobs(model)
    batch = {"input_ids": torch.tensor([[2, 3, 4, 5]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "completion_mask": torch.tensor([[1, 1]])}
    before = reference(batch, 1.0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)
    torch.testing.assert_close(reference(batch, 1.0), before, rtol=0, atol=0)
    assert not torch.allclose(completion_logprobs(model(batch["input_ids"]).logits, batch), before)


def test_the_reference_under_an_adapter_is_the_policy_with_the_adapter_off():
    model = tiny_model().train()
    switched = []

    @contextlib.contextmanager
    def adapter_disabled():
        switched.append(True)
        yield

    reference = reference_logprobs(model, adapter_disabled)
    batch = {"input_ids": torch.tensor([[2, 3, 4]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "completion_mask": torch.tensor([[1]])}
    logps = reference(batch, 1.0)
    expected = model(batch["input_ids"]).logits[0, 1].log_softmax(-1)[4]
    assert switched == [True] and model.training and not logps.requires_grad
    torch.testing.assert_close(logps[0, 0], expected.detach())


def fake_collect(records: list[dict], seed: int) -> dict[str, torch.Tensor]:
    """A rollout of 2 rows per prompt whose tensors record which prompts and seed produced them."""
    index = torch.tensor([record["index"] for record in records for _ in range(2)])
    return {"input_ids": index[:, None].repeat(1, 3), "rewards": index.float(), "seed": torch.full_like(index, seed)}


def test_rollout_batches_cover_the_prompts_and_rows_and_resume_exactly():
    examples = [{"prompt": str(i), "index": i} for i in range(5)]
    batches = RolloutBatches(examples, fake_collect, prompts_per_rollout=2, minibatches=2, epochs=3, seed=1)
    stream = [next(batches) for _ in range(18)]  # 3 rollouts × 3 epochs × 2 minibatches
    for rollout in range(3):
        epochs = stream[rollout * 6:(rollout + 1) * 6]
        for epoch in range(3):  # each epoch's minibatches split the 4 rows of the rollout
            rows = torch.cat([epochs[2 * epoch]["input_ids"][:, 0], epochs[2 * epoch + 1]["input_ids"][:, 0]])
            assert sorted(rows.tolist()) == sorted(epochs[0]["input_ids"][:, 0].tolist()
                                                   + epochs[1]["input_ids"][:, 0].tolist())
            assert len(set(torch.cat([epochs[2 * epoch]["seed"], epochs[2 * epoch + 1]["seed"]]).tolist())) == 1
    prompts = [int(i) for batch in stream[::6] for i in batch["input_ids"][:, 0].tolist()]
    first_pass = set()
    for rollout in range(3):
        rows = torch.cat([stream[rollout * 6]["input_ids"][:, 0], stream[rollout * 6 + 1]["input_ids"][:, 0]])
        first_pass |= set(rows.tolist())
    assert first_pass == set(range(5)) and prompts  # 6 prompts drawn: all 5 in the first pass, then a new pass
    assert len({int(stream[i]["seed"][0]) for i in (0, 6, 12)}) == 3

    resumed_from = RolloutBatches(examples, fake_collect, 2, 2, 3, seed=1)
    for _ in range(7):  # stop mid-rollout
        next(resumed_from)
    state = resumed_from.state_dict()
    resumed = RolloutBatches(examples, fake_collect, 2, 2, 3, seed=1)
    resumed.load_state_dict(state)
    for expected in stream[7:]:
        got = next(resumed)
        assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert resumed.history == batches.history


def test_rollout_batches_refuse_empty_data_and_too_many_minibatches():
    with pytest.raises(DataError):
        RolloutBatches([], fake_collect, 1)
    with pytest.raises(ConfigError, match="minibatches"):
        next(RolloutBatches([{"prompt": "x", "index": 0}], fake_collect, 1, minibatches=3))


def test_ready_made_rewards_on_hand_made_completions():
    completions = ["2 + 3 is 5.", "the answer is 1,000", "#### 7 then 8", "nothing"]
    golds = ["5", "1000", "7", "3"]
    assert exact_match(None, completions, answer=golds) == [1.0, 1.0, 0.0, 0.0]  # the last number counts
    assert strict_match(None, completions, answer=golds) == [0.0, 0.0, 1.0, 0.0]  # only "#### N" counts
    assert exact_text(None, [" b c ", "b c d"], output=["b c", "b c"]) == [1.0, 0.0]
    with pytest.raises(DataError, match="answer"):
        exact_match(None, completions, label=golds)


def test_reward_functions_load_by_name_or_path():
    assert load_reward_function("exact_match") is exact_match
    assert load_reward_function("tests.adapt.test_rollout:constant_reward") is constant_reward
    for spec, words in [("nothing_like_this", "neither"), ("tests.adapt.test_rollout:missing", "has no"),
                        ("no_such_module_xyz:f", "cannot be imported"), ("tests.adapt.test_rollout:WORDS",
                                                                         "not a function")]:
        with pytest.raises(ConfigError, match=words):
            load_reward_function(spec)


def test_the_scorer_weighs_functions_and_adds_the_reward_model():
    model = tiny_model()
    rollout = sample(model, ids(["b c", "d"]), GenerationConfig(max_new_tokens=3, do_sample=True, seed=0),
                     word_tokenizer())
    seen = {}

    def lengths(prompts, completions, **columns):
        seen.update(prompts=prompts, columns=columns)
        return [len(text.split()) for text in completions]

    class LastToken(torch.nn.Module):  # a reward model: the id of the last real token
        def forward(self, input_ids, attention_mask):
            return input_ids[torch.arange(len(input_ids)), attention_mask.sum(1) - 1].float()

    records = [{"prompt": "b c", "answer": "x"}, {"prompt": "d", "answer": "y"}]
    scores = Scorer([lengths, constant_reward], [2.0, 1.0], LastToken())(records, rollout)
    last = [rollout.completion_ids[row, int(rollout.completion_mask[row].sum()) - 1] for row in range(2)]
    expected = [2.0 * len(rollout.texts[row].split()) + 0.5 + float(last[row]) for row in range(2)]
    torch.testing.assert_close(scores, torch.tensor(expected))
    assert seen == {"prompts": ["b c", "d"], "columns": {"answer": ["x", "y"]}}
    with pytest.raises(DataError, match="one finite number"):
        Scorer([lambda prompts, completions, **columns: [1.0]])(records, rollout)
    with pytest.raises(ConfigError, match="reward_weights"):
        Scorer([lengths], [1.0, 2.0])
    with pytest.raises(ConfigError, match="reward_model"):
        Scorer([])


def test_a_reward_model_directory_is_loaded_lazily_and_frozen(monkeypatch):
    """method.reward_model: DIR goes to llmlab.adapt.reward.load_reward_model(path, device=...), the reward-model
    method's loader (stood in for here), and the model it returns is frozen."""
    import sys
    import types

    calls = []

    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(()))

        def forward(self, input_ids, attention_mask):
            return self.weight * attention_mask.sum(1)

    def load_reward_model(path, device=None):
        calls.append((path, device))
        return Scores()

    monkeypatch.setitem(sys.modules, "llmlab.adapt.reward", types.SimpleNamespace(load_reward_model=load_reward_model))
    scorer = scorer_from_params({"reward": None, "reward_model": "some/dir"}, torch.device("cpu"))
    assert calls == [("some/dir", torch.device("cpu"))]
    assert not scorer.reward_model.training and not scorer.reward_model.weight.requires_grad
    rollout = sample(tiny_model(), ids(["b c", "d"]), GenerationConfig(max_new_tokens=3, do_sample=True, seed=0))
    torch.testing.assert_close(scorer([{"prompt": "b c"}, {"prompt": "d"}], rollout),
                               rollout.attention_mask.sum(1).float())

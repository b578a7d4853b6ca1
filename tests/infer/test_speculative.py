"""Speculative decoding against the target alone: greedy tokens equal to its plain greedy decoding whatever the draft,
samples that follow its exact distribution (enumerated by forward passes, chi-square) and not the draft's, and the
acceptance rate of the rejection rule, sum_x min(p, q)."""

from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from llmlab.errors import ConfigError
from llmlab.infer.cache import DynamicCache, RaggedCache, StaticCache
from llmlab.infer.generate import generate
from llmlab.model import Model, presets
from tests.infer.test_generate import text_model  # noqa: F401  (a fixture)

PROMPTS = [[5, 9, 14], [3, 8, 20, 21, 7, 2, 30], [11, 4, 6, 19, 1]]
VOCAB = 97
SMALL = dict(n_layers=1, d_model=64, n_heads=2, d_ff=128)
NOISE = 0.01  # a perturbed copy of the target as draft keeps about a third of its tokens


def tiny(name: str = "llama", seed: int = 0, **overrides) -> Model:
    """A tiny random model with logits peaked enough that greedy choices are not near-ties."""
    torch.manual_seed(seed)
    options = dict(vocab_size=VOCAB, init_std=0.2, dropout=0.0) | overrides
    return Model(presets.get(name, "tiny", **options)).eval()


def perturbed(model: Model, scale: float, seed: int = 1) -> Model:
    """A copy of model with Gaussian noise on every weight: a draft that agrees with it some of the time."""
    copy = Model(model.config).eval()
    copy.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in copy.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return copy


TARGET = tiny()
DRAFTS = {"same": lambda: TARGET, "perturbed": lambda: perturbed(TARGET, NOISE),
          "smaller": lambda: tiny(seed=3, **SMALL), "unrelated": lambda: tiny(seed=4)}


@pytest.mark.parametrize("cache", ["dynamic", "static", "ragged"])
@pytest.mark.parametrize("kind", DRAFTS)
def test_greedy_tokens_are_the_targets_own(kind, cache):
    options = dict(max_new_tokens=16, ignore_eos=True, cache=cache)
    expected = generate(TARGET, PROMPTS, **options).tokens
    for k in (1, 3):
        result = generate(TARGET, PROMPTS, draft_model=DRAFTS[kind](), speculate_k=k, **options)
        assert result.tokens == expected and result.finish_reasons == ["length"] * 3
        stats = result.speculation
        assert all(s.drafted >= s.accepted and s.accepted + s.rounds == 16 for s in stats)
        if kind == "perturbed":  # the drafts are partly kept: rollback in the middle of a round happens
            assert 0 < sum(s.accepted for s in stats) < sum(s.drafted for s in stats)


def test_a_draft_equal_to_the_target_is_always_kept():
    result = generate(TARGET, PROMPTS[:1], max_new_tokens=20, ignore_eos=True, draft_model=TARGET, speculate_k=4)
    stats = result.speculation[0]
    assert (stats.rounds, stats.drafted, stats.accepted) == (4, 16, 16)  # 4 rounds of 4 drafts and the target's own
    assert stats.mean_accepted == 4.0 and stats.acceptance_rate == 1.0


@pytest.mark.parametrize("options", [dict(repetition_penalty=1.8), dict(no_repeat_ngram_size=2),
                                     dict(presence_penalty=1.5, frequency_penalty=0.7), dict(min_new_tokens=10)],
                         ids=["repetition", "no-repeat-2gram", "presence-frequency", "min-new"])
def test_greedy_with_penalties_is_the_targets_own(options):
    draft = perturbed(TARGET, NOISE)
    eos = None
    if "min_new_tokens" in options:  # an EOS that greedy decoding picks early, held back until the minimum
        eos = generate(TARGET, PROMPTS[1:2], max_new_tokens=2, ignore_eos=True).tokens[0][1]
    settings = dict(max_new_tokens=14, eos_token_id=eos, ignore_eos=eos is None, **options)
    expected = generate(TARGET, PROMPTS, **settings)
    result = generate(TARGET, PROMPTS, draft_model=draft, speculate_k=3, **settings)
    assert result.tokens == expected.tokens and result.finish_reasons == expected.finish_reasons


@pytest.mark.parametrize(("target", "draft"), [
    (lambda: tiny("prefix_llama"), lambda target: tiny("llama", seed=2, **SMALL)),
    (lambda: tiny("gpt2", max_seq_len=12), lambda target: perturbed(target, NOISE)),
    (lambda: tiny("t5"), lambda target: perturbed(target, NOISE)),
    (lambda: tiny("t5"), lambda target: tiny("t5", seed=2, n_layers=1, n_decoder_layers=1)),
], ids=["prefix-decoder-llama-draft", "learned-positions-to-the-context-end", "encoder-decoder", "smaller-t5"])
@pytest.mark.parametrize("cache", ["dynamic", "static", "ragged"])
def test_other_architectures_keep_the_targets_tokens(target, draft, cache):
    target = target()
    options = dict(max_new_tokens=10, ignore_eos=True, cache=cache)
    expected = generate(target, PROMPTS, **options)
    result = generate(target, PROMPTS, draft_model=draft(target), speculate_k=3, **options)
    assert result.tokens == expected.tokens and result.finish_reasons == expected.finish_reasons


def test_eos_and_a_draft_with_a_shorter_context():
    free = generate(TARGET, PROMPTS, max_new_tokens=12, ignore_eos=True).tokens
    eos = free[0][5]
    expected = generate(TARGET, PROMPTS, max_new_tokens=12, eos_token_id=eos)
    short = tiny("gpt2", seed=2, max_seq_len=9)  # learned positions: it drafts up to 9 of them, then the target alone
    result = generate(TARGET, PROMPTS, max_new_tokens=12, eos_token_id=eos, draft_model=short, speculate_k=4)
    assert result.tokens == expected.tokens and result.finish_reasons == expected.finish_reasons
    assert result.finish_reasons[0] == "stop" and result.tokens[0][-1] == eos
    assert all(s.drafted > 0 for s in result.speculation)


def test_stop_strings_end_the_text_and_the_tokens(text_model):  # noqa: F811
    options = dict(max_new_tokens=24, ignore_eos=True)
    text = generate(text_model, "The cat", **options).text[0]
    stop = text[5:8]
    expected = generate(text_model, "The cat", stop=[stop], **options)
    result = generate(text_model, "The cat", stop=[stop], draft_model=perturbed(text_model, NOISE), **options)
    assert (result.tokens, result.text, result.finish_reasons) == (expected.tokens, expected.text, ["stop"])


def test_logprobs_are_the_targets():
    options = dict(max_new_tokens=8, ignore_eos=True, logprobs=3)
    expected = generate(TARGET, PROMPTS[:2], **options)
    result = generate(TARGET, PROMPTS[:2], draft_model=perturbed(TARGET, NOISE), speculate_k=3, **options)
    for row in range(2):
        assert result.logprobs[row] == pytest.approx(expected.logprobs[row], abs=1e-5)
        assert [list(top) for top in result.top_logprobs[row]] == [list(top) for top in expected.top_logprobs[row]]


@pytest.mark.parametrize("cache", [DynamicCache, StaticCache, RaggedCache])
def test_a_truncated_cache_continues_like_a_fresh_one(cache):
    model = TARGET
    make = {DynamicCache: lambda: DynamicCache(model.config.n_layers),
            StaticCache: lambda: StaticCache.for_model(model, 1, 16),
            RaggedCache: lambda: RaggedCache.for_model(model, [16])}[cache]

    def run(state, ids):
        hidden, _ = model.hidden(model.prepare(torch.tensor([ids]), cache=state))
        return model.logits(hidden)[0]

    with torch.no_grad():
        rolled = make()
        run(rolled, [5, 9, 14, 60, 61, 62, 63])
        rolled.truncate(4)  # keep 5, 9, 14, 60; the slots of 61..63 stay behind in a static cache
        logits = run(rolled, [70, 71])
        fresh = model(torch.tensor([[5, 9, 14, 60, 70, 71]])).logits[0, -2:]
    torch.testing.assert_close(logits, fresh, atol=1e-5, rtol=1e-5)


def test_seeded_samples_repeat_alone_and_in_a_batch():
    options = dict(max_new_tokens=10, ignore_eos=True, do_sample=True, seed=7, draft_model=perturbed(TARGET, NOISE))
    both = generate(TARGET, PROMPTS[:2], n=2, **options).tokens
    assert generate(TARGET, PROMPTS[1:2], n=2, **options).tokens == both[2:]
    assert both[0] != both[1]


@pytest.fixture
def one_thread():
    """One torch thread: the sampling test's thousands of tiny forward passes only contend for more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SAMPLES = 3000
SMALL_VOCAB = 8
PROMPT = [1, 3, 5]


def small_vocab_model(seed: int, **overrides) -> Model:
    """A 1-layer llama over 8 tokens with spread-out next-token distributions."""
    torch.manual_seed(seed)
    config = presets.llama("tiny", vocab_size=SMALL_VOCAB, n_layers=1, init_std=0.1, dropout=0.0, **overrides)
    return Model(config).eval()


def first_two_distribution(model: Model, temperature: float = 1.0, top_k: int = 0, presence: float = 0.0):
    """The exact probability [64] of each pair of first two tokens after PROMPT: temperature, top-k and the presence
    penalty applied by hand to the logits of one forward pass over the 8 possible first tokens."""
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT + [first] for first in range(SMALL_VOCAB)])).logits.double()

    def processed(scores):
        scores = scores / temperature
        if top_k:
            scores = scores.masked_fill(scores < scores.topk(top_k, dim=-1).values[..., -1:], float("-inf"))
        return scores.softmax(dim=-1)

    first = processed(logits[0, -2])
    second = processed(logits[:, -1] - presence * torch.eye(SMALL_VOCAB, dtype=torch.float64))
    return (first[:, None] * second).flatten()


def chi_square_p(pairs: list[tuple[int, int]], probabilities: torch.Tensor) -> float:
    """The chi-square p-value of the observed pairs against probabilities, cells expected fewer than 5 times pooled
    (those of probability 0 left out); a pair of probability 0 gives 0."""
    counts = Counter(first * SMALL_VOCAB + second for first, second in pairs)
    observed = torch.tensor([counts[cell] for cell in range(SMALL_VOCAB ** 2)], dtype=torch.float64)
    expected = probabilities / probabilities.sum() * len(pairs)
    keep, impossible = expected >= 5, expected < 1e-9
    if bool((observed[impossible] > 0).any()):
        return 0.0
    pooled = ~keep & ~impossible
    cells = [(observed[keep], expected[keep])] + ([(observed[pooled].sum().view(1), expected[pooled].sum().view(1))]
                                                   if bool(pooled.any()) else [])
    observed, expected = (torch.cat(parts) for parts in zip(*cells))
    return float(chisquare(observed.numpy(), expected.numpy()).pvalue)


@pytest.mark.parametrize(("new_tokens", "k", "options"), [
    (2, 4, {}),  # one draft a round: its acceptance or the residual, then the target's own token
    (3, 2, {}),  # the first two tokens of rounds of two drafts: the second draft's acceptance too
    (2, 4, dict(temperature=0.7, top_k=5, presence_penalty=1.0)),  # processed distributions
], ids=["one-draft", "two-drafts", "temperature-top-k-presence"])
def test_samples_follow_the_targets_distribution(new_tokens, k, options, one_thread):
    target, draft = small_vocab_model(0), small_vocab_model(10, d_model=64, n_heads=2)
    torch.manual_seed(0)  # one random stream for all samples, rather than generators seeded 0, 1, 2, …
    result = generate(target, [PROMPT], max_new_tokens=new_tokens, ignore_eos=True, do_sample=True, n=SAMPLES,
                      draft_model=draft, speculate_k=k, **options)
    pairs = [tuple(tokens[:2]) for tokens in result.tokens]
    hand = dict(temperature=options.get("temperature", 1.0), top_k=options.get("top_k", 0),
                presence=options.get("presence_penalty", 0.0))
    p, q = first_two_distribution(target, **hand), first_two_distribution(draft, **hand)
    assert chi_square_p(pairs, p) > 1e-3
    assert chi_square_p(pairs, q) < 1e-3  # the same test tells the draft's distribution apart
    if new_tokens == 2 and not options:  # the draft is kept with probability sum_x min(p(x), q(x)) (Leviathan et al.)
        kept = p.view(SMALL_VOCAB, -1).sum(1).minimum(q.view(SMALL_VOCAB, -1).sum(1)).sum().item()
        rate = sum(s.accepted for s in result.speculation) / SAMPLES  # one draft token per sequence
        assert 0.2 < kept < 0.9 and abs(rate - kept) < 4 * (kept * (1 - kept) / SAMPLES) ** 0.5


@pytest.mark.parametrize(("call", "words"), [
    (lambda: generate(TARGET, PROMPTS, draft_model=tiny(vocab_size=50)), ["vocabulary of 50", "97"]),
    (lambda: generate(TARGET, PROMPTS, draft_model=TARGET, speculate_k=0), ["speculate_k", "at least 1"]),
    (lambda: generate(TARGET, PROMPTS, draft_model=TARGET, speculate_k=True), ["speculate_k"]),
    (lambda: generate(tiny("t5"), PROMPTS, draft_model=TARGET), ["encoder-decoder", "decoder"]),
    (lambda: generate(TARGET, PROMPTS, draft_model=tiny("bert")), ["encoder-only"]),
    (lambda: generate(TARGET, PROMPTS, draft_model=TARGET, num_beams=2), ["Beam search", "speculative"]),
])
def test_bad_requests_are_one_sentence(call, words):
    with pytest.raises(ConfigError) as error:
        call()
    message = str(error.value)
    assert message.endswith(".") and "\n" not in message and all(word in message for word in words), message

"""Log-likelihood scoring against the model's own log-softmax over whole sequences: continuations, shared contexts,
batch-size independence, encoder-decoders, and rolling windows for perplexity."""

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.evaluate.scoring import loglikelihood, loglikelihood_rolling
from llmlab.model import Model, presets

VOCAB = 97


def tiny(name="llama", **options):
    torch.manual_seed(0)
    return Model(presets.get(name, "tiny", vocab_size=VOCAB, init_std=0.2, dropout=0.0, **options)).eval()


def reference(model, context, continuation):
    """log p(continuation | context) and greedy-ness from one forward over the whole sequence."""
    ids = torch.tensor([list(context) + list(continuation)])
    with torch.no_grad():
        logprobs = model(ids).logits[0].log_softmax(-1)
    positions = range(len(context) - 1, ids.shape[1] - 1)
    total = sum(logprobs[p, ids[0, p + 1]].item() for p in positions)
    greedy = all(logprobs[p].argmax().item() == ids[0, p + 1].item() for p in positions)
    return total, greedy


REQUESTS = [([5, 9, 14], [3]), ([5, 9, 14], [8, 20, 21]), ([5, 9, 14], [7, 2]), ([11, 4], [6, 19, 1, 2]),
            (list(range(1, 30)), [40, 41]), ([3], [3, 3, 3])]


def test_continuations_score_as_the_whole_sequence_does():
    model = tiny()
    results = loglikelihood(model, REQUESTS, batch_size=4)
    for (context, continuation), result in zip(REQUESTS, results):
        total, greedy = reference(model, context, continuation)
        assert result.logprob == pytest.approx(total, abs=1e-4) and result.is_greedy == greedy
        assert result.tokens == len(continuation)


def test_a_prefix_decoder_reads_the_context_as_its_bidirectional_prefix():
    model = tiny("prefix_llama")
    results = loglikelihood(model, REQUESTS, batch_size=4)
    for (context, continuation), result in zip(REQUESTS, results):
        ids = torch.tensor([list(context) + list(continuation)])
        with torch.no_grad():  # by hand: the context attends to all of itself, the continuation causally
            inputs = model.prepare(ids, prefix_lengths=torch.tensor([len(context)]))
            logprobs = model.logits(model.hidden(inputs)[0])[0].log_softmax(-1)
        total = sum(logprobs[p, ids[0, p + 1]].item() for p in range(len(context) - 1, ids.shape[1] - 1))
        assert result.logprob == pytest.approx(total, abs=1e-4)
    causal = [reference(model, context, continuation)[0] for context, continuation in REQUESTS]
    assert any(abs(result.logprob - c) > 1e-3 for result, c in zip(results, causal))  # not read causally


def test_a_greedy_continuation_is_recognised():
    model = tiny()
    context = [5, 9, 14]
    with torch.no_grad():
        first = model(torch.tensor([context])).logits[0, -1].argmax().item()
    assert loglikelihood(model, [(context, [first])])[0].is_greedy


def test_results_do_not_depend_on_the_batch_size():
    model = tiny("gpt2")  # max_length 32: a batch of size 1 reads 32 tokens (one request), one of 16 reads all six
    one = loglikelihood(model, REQUESTS, batch_size=1, max_length=32)
    sixteen = loglikelihood(model, REQUESTS, batch_size=16, max_length=32)
    assert [r.is_greedy for r in one] == [r.is_greedy for r in sixteen]
    assert [r.logprob for r in one] == pytest.approx([r.logprob for r in sixteen], abs=1e-5)


def multiple_choice_requests(model, shared_prefix: bool):
    """Five questions of 0-6 tokens after a 20-token prefix (an instruction, fixed demonstrations) or none, each with
    four choices of 1-5 tokens, one of them the greedy next token."""
    generator = torch.Generator().manual_seed(3)

    def tokens(count):
        return torch.randint(1, VOCAB, (count,), generator=generator).tolist()

    prefix = tokens(20)
    requests = []
    for length in (6, 0, 3, 6, 1):
        context = (prefix if shared_prefix else tokens(20)) + tokens(length)
        with torch.no_grad():
            greedy = model(torch.tensor([context])).logits[0, -1].argmax().item()
        choices = [tokens(int(n)) for n in torch.randint(1, 6, (3,), generator=generator)] + [[greedy]]
        requests += [(context, choice) for choice in choices]
    return requests


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "gpt_neo"])  # rotary, learned, ALiBi, sliding window
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_shared_contexts_score_as_the_whole_sequence_does_at_any_batch_size(name, shared_prefix):
    model = tiny(name)
    requests = multiple_choice_requests(model, shared_prefix)
    expected = [reference(model, context, continuation) for context, continuation in requests]
    assert sum(greedy for _, greedy in expected) >= 5
    for batch_size in (1, 3, 16):
        results = loglikelihood(model, requests, batch_size=batch_size)
        assert [r.logprob for r in results] == pytest.approx([total for total, _ in expected], abs=1e-4)
        assert [r.is_greedy for r in results] == [greedy for _, greedy in expected]
        assert [r.tokens for r in results] == [len(continuation) for _, continuation in requests]


def test_encoder_decoders_score_the_continuation_as_the_decoder_output():
    model = tiny("t5")
    context, continuation = [5, 9, 14, 1], [8, 20, 21]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context]), labels=torch.tensor([continuation])).logits[0]
    expected = logits.log_softmax(-1).gather(1, torch.tensor(continuation)[:, None]).sum().item()
    got = loglikelihood(model, [(context, continuation), ([3, 4], [5])])[0]
    assert got.logprob == pytest.approx(expected, abs=1e-4)


def test_rolling_scores_equal_full_context_scoring_where_the_text_fits():
    model = tiny()
    text = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    expected, _ = reference(model, [0], text)
    assert loglikelihood_rolling(model, [text], prefix_token=0)[0] == pytest.approx(expected, abs=1e-4)


def windowed_reference(model, tokens, max_length, stride):
    """Token i of tokens (after the first) scored after tokens[max(0, e - max_length - 1):i], where e ends the
    stride-long span holding i: the spans tile the text, each window holds max_length tokens to predict from."""
    total = 0.0
    for end in range(1, len(tokens), stride):
        stop = min(end + stride, len(tokens))
        begin = min(max(0, stop - max_length - 1), end - 1)
        total += reference(model, tokens[begin:end], tokens[end:stop])[0]
    return total


@pytest.mark.parametrize("stride", [4, 8])
def test_rolling_windows_score_every_token_once_with_the_context_they_allow(stride):
    model = tiny()
    text = torch.randint(0, VOCAB, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    got = loglikelihood_rolling(model, [text, text[:5]], prefix_token=0, max_length=8, stride=stride)
    assert got[0] == pytest.approx(windowed_reference(model, [0] + text, 8, stride), abs=1e-4)
    assert got[1] == pytest.approx(reference(model, [0], text[:5])[0], abs=1e-4)


@pytest.mark.parametrize(("requests", "words"), [
    ([([1, 2], [])], ["Request 0", "empty continuation"]),
    ([([], [1])], ["Request 0", "empty context"]),
    ([([1], list(range(300)))], ["300 tokens", "256"]),
])
def test_bad_requests_are_one_sentence(requests, words):
    with pytest.raises(ConfigError) as error:
        loglikelihood(tiny(), requests)
    assert all(word in str(error.value) for word in words)

"""The continuous-batching engine against generate() for each request alone: greedy and seeded tokens, for every
family that can generate, under chunked prefill, prefix caching, preemption and cancellation."""

import asyncio

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.engine import AsyncEngine, Engine, EngineFullError
from llmlab.infer.generate import BlankTokens, generate
from llmlab.model import Model, presets
from tests.infer.test_generate import HF_FAMILIES, OWN_FAMILIES, VOCAB, text_model, tiny_model  # noqa: F401

# lengths around the block size (4) and the step's token budget (16): prompts are chunked and share no block boundary
PROMPTS = [[5, 9, 14], [3, 8, 20, 21, 7, 2, 30], [11, 4, 6, 19, 1], list(range(2, 23)), list(range(40, 80)),
           [7] * 13]
GREEDY = GenerationConfig(max_new_tokens=8, ignore_eos=True)


def small_engine(model, **options) -> Engine:
    """An engine whose limits are small enough that requests wait, prompts are chunked and admission is staggered."""
    settings = dict(max_num_seqs=3, block_size=4, max_num_batched_tokens=16, kv_cache_tokens=256)
    return Engine(model, **{**settings, **options})


def alone(model, prompts, config, **options):
    return [generate(model, [prompt], config, **options).tokens for prompt in prompts]


def run(engine, prompts, config):
    return [[sample.token_ids for sample in output.outputs] for output in engine.generate(prompts, config)]


@pytest.mark.parametrize("name", HF_FAMILIES + OWN_FAMILIES)
def test_greedy_tokens_under_continuous_batching_are_each_prompts_alone(name):
    model = tiny_model(name)
    engine = small_engine(model)
    assert run(engine, PROMPTS, GREEDY) == alone(model, PROMPTS, GREEDY)
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.running == stats.waiting == 0
    if model.config.arch == "decoder":  # and again from the prefix cache, which now holds every prompt's full blocks
        assert run(engine, PROMPTS, GREEDY) == alone(model, PROMPTS, GREEDY)
        assert engine.stats().prefix_cache_hits > stats.prefix_cache_hits


def test_glm_fills_blanks_as_generate_does():
    torch.manual_seed(0)
    model = Model(presets.glm("tiny", vocab_size=VOCAB, init_std=0.2)).eval()
    tokens = BlankTokens(masks=(90, 91, 92), sop=93, eop=94)
    prompts = [[5, 9, 90, 14, 15], [3, 8, 20, 21, 92], [11, 91, 6]]
    config = GenerationConfig(max_new_tokens=6)
    engine = small_engine(model, blank_tokens=tokens)
    assert run(engine, prompts, config) == alone(model, prompts, config, blank_tokens=tokens)


def test_requests_with_different_options_share_batches_and_keep_their_own_tokens():
    model = tiny_model("llama")
    configs = [GREEDY, GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.3, top_k=30, seed=4),
               GenerationConfig(max_new_tokens=6, repetition_penalty=1.8, no_repeat_ngram_size=2),
               GenerationConfig(max_new_tokens=9, do_sample=True, top_p=0.8, seed=11, n=3, presence_penalty=0.5),
               GenerationConfig(max_new_tokens=7, min_new_tokens=5, eos_token_id=(3, 17), logprobs=2),
               GenerationConfig(max_new_tokens=5, do_sample=True, min_p=0.1, frequency_penalty=1.0, seed=2)]
    engine = small_engine(model)
    ids = [engine.add_request(prompt, config) for prompt, config in zip(PROMPTS, configs)]
    finished = {}
    while engine.has_unfinished():
        finished.update({output.request_id: output for output in engine.step() if output.finished})
    for request_id, prompt, config in zip(ids, PROMPTS, configs):
        expected = generate(model, [prompt], config)
        output = finished[request_id]
        assert [sample.token_ids for sample in output.outputs] == expected.tokens
        assert [sample.finish_reason for sample in output.outputs] == expected.finish_reasons
        if config.logprobs:
            assert output.outputs[0].logprobs == pytest.approx(expected.logprobs[0], abs=1e-5)
            assert [list(top) for top in output.outputs[0].top_logprobs] == [list(t) for t in expected.top_logprobs[0]]


def test_preempted_sequences_are_recomputed_and_lose_nothing():
    model = tiny_model("gpt2")
    # 20 blocks of 4 tokens cannot hold three of these sequences at once
    engine = small_engine(model, max_model_len=80, kv_cache_tokens=80, max_num_batched_tokens=64)
    prompts = [list(range(1, 41)), list(range(2, 37)), list(range(3, 39)), [4, 5, 6]]
    config = GenerationConfig(max_new_tokens=24, ignore_eos=True)
    assert run(engine, prompts, config) == alone(model, prompts, config)
    assert engine.stats().preemptions > 0 and engine.stats().kv_blocks_used == 0


def test_sampled_requests_survive_preemption_with_their_seeds():
    model = tiny_model("llama")
    engine = small_engine(model, max_model_len=80, kv_cache_tokens=80, max_num_batched_tokens=64)
    prompts = [list(range(1, 41)), list(range(2, 37)), list(range(3, 39))]
    config = GenerationConfig(max_new_tokens=24, ignore_eos=True, do_sample=True, seed=9, n=2)
    assert run(engine, prompts, config) == alone(model, prompts, config)
    assert engine.stats().preemptions > 0


def test_a_long_prompt_is_prefilled_in_chunks_while_others_keep_decoding():
    model = tiny_model("llama")
    engine = small_engine(model, max_num_batched_tokens=8)
    short = engine.add_request([1, 2, 3], GenerationConfig(max_new_tokens=30, ignore_eos=True))
    engine.step()  # the short prompt is prefilled and has its first token
    long = engine.add_request(list(range(5, 45)), GREEDY)
    progress = []
    while engine.has_unfinished():
        outputs = {output.request_id: output for output in engine.step()}
        progress.append((len(outputs[short].outputs[0].token_ids) if short in outputs else None,
                         long in outputs and bool(outputs[long].outputs[0].token_ids)))
    # the short request gained a token in each of the steps that prefilled the 40-token prompt 7 tokens at a time
    prefill_steps = next(step for step, (_, started) in enumerate(progress) if started)
    assert prefill_steps >= 5 and [count for count, _ in progress[:prefill_steps]] == list(range(2, prefill_steps + 2))
    assert run(engine, [list(range(5, 45))], GREEDY) == alone(model, [list(range(5, 45))], GREEDY)


def test_the_prefix_cache_reuses_full_blocks_and_evicts_the_least_recently_used():
    model = tiny_model("llama")
    engine = small_engine(model, kv_cache_tokens=32, max_model_len=32)  # 8 blocks of 4 tokens
    prefix = list(range(10, 22))  # 3 full blocks
    first = run(engine, [prefix + [1, 2]], GREEDY)
    stats = engine.stats()
    second = run(engine, [prefix + [1, 2]], GREEDY)
    # the second request looks up its 3 blocks of 14 - 1 prompt tokens and finds them all
    assert second == first
    assert engine.stats().prefix_cache_queries - stats.prefix_cache_queries == 3
    assert engine.stats().prefix_cache_hits - stats.prefix_cache_hits == 3
    # 20 + 8 tokens (27 fed) take 7 blocks: the 3 never registered, then the 4 least recently freed of the 5
    # registered, the first request's tail first, so that only the prefix's first block is left
    run(engine, [list(range(50, 70))], GREEDY)
    stats = engine.stats()
    run(engine, [prefix + [1, 2]], GREEDY)
    assert engine.stats().prefix_cache_hits - stats.prefix_cache_hits == 1
    assert engine.stats().prefix_cache_queries - stats.prefix_cache_queries == 2


def test_prompt_logprobs_are_the_models_log_softmax():
    model = tiny_model("llama")
    engine = small_engine(model, max_num_batched_tokens=8)  # several chunks
    prompt = PROMPTS[4]
    engine.add_request(prompt, GREEDY, prompt_logprobs=3, max_new_tokens=0)
    engine.add_request(prompt, GREEDY, prompt_logprobs=0)
    outputs = []
    while engine.has_unfinished():
        outputs += [output for output in engine.step() if output.finished]
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0].log_softmax(-1)
    for output in outputs:
        assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == len(prompt)
        for position, scored in enumerate(output.prompt_logprobs[1:], start=1):
            assert scored.logprob == pytest.approx(expected[position - 1, prompt[position]].item(), abs=1e-5)
    scored_only, generated = sorted(outputs, key=lambda output: len(output.outputs[0].token_ids))
    assert scored_only.outputs[0].token_ids == [] and scored_only.outputs[0].finish_reason == "length"
    assert list(scored_only.prompt_logprobs[5].top) == expected[4].topk(3).indices.tolist()
    assert generated.outputs[0].token_ids == alone(model, [prompt], GREEDY)[0][0]


def test_stop_strings_and_text_match_generate(text_model):
    tokenizer = text_model.tokenizer
    prompts = [tokenizer.encode(text).ids for text in ("The cat", "Once upon a time", "The dog ran")]
    config = GenerationConfig(max_new_tokens=20, stop=("park", "mat", "."))
    engine = small_engine(text_model)
    expected = [generate(text_model, [prompt], config) for prompt in prompts]
    for output, result in zip(engine.generate(prompts, config), expected):
        assert output.outputs[0].token_ids == result.tokens[0]
        assert output.outputs[0].text == result.text[0]
        assert output.outputs[0].finish_reason == result.finish_reasons[0]


def test_an_aborted_request_leaves_within_a_step_and_frees_its_blocks():
    model = tiny_model("llama")
    engine = small_engine(model, prefix_caching=False)
    keep = engine.add_request(PROMPTS[1], GenerationConfig(max_new_tokens=20, ignore_eos=True))
    drop = engine.add_request(PROMPTS[4], GenerationConfig(max_new_tokens=20, ignore_eos=True))
    for _ in range(4):
        engine.step()
    used = engine.stats().kv_blocks_used
    engine.abort(drop)
    outputs = {output.request_id: output for output in engine.step()}
    assert outputs[drop].finished and outputs[drop].outputs[0].finish_reason == "abort"
    assert engine.stats().kv_blocks_used < used
    while engine.has_unfinished():
        outputs.update({output.request_id: output for output in engine.step()})
    assert outputs[keep].outputs[0].token_ids == alone(model, [PROMPTS[1]], GenerationConfig(max_new_tokens=20,
                                                                                            ignore_eos=True))[0][0]
    assert engine.stats().kv_blocks_used == 0


@pytest.mark.parametrize(("call", "words"), [
    (lambda e: e.add_request([], GREEDY), ["empty"]),
    (lambda e: e.add_request([1, 500], GREEDY), ["token 1", "500"]),
    (lambda e: e.add_request(list(range(20)), GenerationConfig(max_new_tokens=20)), ["20", "40", "32"]),
    (lambda e: e.add_request([1, 2], GenerationConfig(num_beams=2)), ["beam"]),
    (lambda e: e.add_request([1, 2], GenerationConfig(do_sample=True, n=5)), ["n=5", "max_num_seqs"]),
    (lambda e: e.add_request([1, 2], GREEDY, max_new_tokens=-1), ["max_new_tokens"]),
    (lambda e: e.add_request([1, 2], GenerationConfig(stop=("x",))), ["tokenizer"]),
])
def test_bad_requests_are_one_sentence(call, words):
    engine = small_engine(tiny_model("gpt2"), max_model_len=32)
    with pytest.raises(ConfigError) as error:
        call(engine)
    message = str(error.value)
    assert message.count(". ") == 0 and all(word in message for word in words)
    assert not engine.has_unfinished()


def test_a_full_queue_and_a_pool_smaller_than_one_sequence_are_refused():
    model = tiny_model("gpt2")
    engine = small_engine(model, max_waiting=2)
    engine.add_request([1], GREEDY)
    engine.add_request([2], GREEDY)
    with pytest.raises(EngineFullError, match="queue is full"):
        engine.add_request([3], GREEDY)
    with pytest.raises(ConfigError, match="max_model_len"):
        Engine(model, kv_cache_tokens=100)  # the tiny preset's context is 256 tokens
    with pytest.raises(ConfigError, match="encoder-only"):
        Engine(Model(presets.bert("tiny", vocab_size=VOCAB)))


def test_the_async_engine_streams_concurrent_requests_and_aborts_abandoned_ones():
    model = tiny_model("llama")
    config = GenerationConfig(max_new_tokens=12, ignore_eos=True)

    async def scenario():
        engine = AsyncEngine(small_engine(model))
        await engine.start()

        async def collect(prompt):
            seen = []
            async for output in engine.generate(prompt, config):
                seen.append(list(output.outputs[0].token_ids))
            return seen

        async def abandon(prompt):
            async for output in engine.generate(prompt, GenerationConfig(max_new_tokens=200, ignore_eos=True)):
                if len(output.outputs[0].token_ids) >= 3:
                    break

        results = await asyncio.gather(*(collect(prompt) for prompt in PROMPTS[:4]), abandon(PROMPTS[4]))
        for _ in range(100):  # the abandoned request is aborted at the engine's next step
            if not engine.engine.has_unfinished():
                break
            await asyncio.sleep(0.01)
        stats = engine.engine.stats()
        await engine.shutdown()
        with pytest.raises(EngineFullError, match="shutting down"):
            async for _ in engine.generate(PROMPTS[0], config):
                pass
        return results[:4], stats

    streams, stats = asyncio.run(scenario())
    for seen, expected in zip(streams, alone(model, PROMPTS[:4], config)):
        assert seen[-1] == expected[0]
        assert all(seen[i] == seen[i + 1][:len(seen[i])] for i in range(len(seen) - 1))  # each extends the last
    assert stats.running == stats.waiting == 0 and stats.kv_blocks_used == 0


def test_requests_added_from_another_thread_while_steps_run_are_all_taken_in():
    import sys
    import threading

    engine = small_engine(tiny_model("llama"), max_num_seqs=4)
    config = GenerationConfig(max_new_tokens=1, ignore_eos=True)
    added, failures = [], []

    def add():  # as the server's event loop does, while the engine thread steps; named ids check the arrivals
        try:
            for index in range(3000):
                added.append(engine.add_request([5, 9, 14], config, request_id=f"r{index}"))
        except Exception as error:  # a race would raise here, e.g. a deque mutated during iteration
            failures.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that a race shows within the test's few seconds
    try:
        adder = threading.Thread(target=add)
        adder.start()
        finished = set()
        while adder.is_alive() or engine.has_unfinished():
            finished.update(output.request_id for output in engine.step() if output.finished)
        adder.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failures
    assert finished == set(added) and len(added) == 3000

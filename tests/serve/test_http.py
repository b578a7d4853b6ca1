"""The HTTP layer over a test double of the engine (tests/serve/fake_engine.py): OpenAI's shapes, every error a
client can cause answered with its status in OpenAI's error JSON, and the server serving on after each."""

import asyncio
import json
import socket
import time

import pytest

import llmlab
from llmlab.infer.generate import generate
from tests.serve.fake_engine import FakeAsyncEngine
from tests.serve.servers import API_KEY, app_server, get, post, tiny_checkpoint

openai = pytest.importorskip("openai")
from llmlab.infer.serve import ServeSettings, create_app  # noqa: E402  (after the extras are known to be there)

NAME = "tiny"
CONTEXT = 64


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return llmlab.load(tiny_checkpoint(tmp_path_factory.mktemp("serve") / "model"))


@pytest.fixture(scope="module")
def engine(model):
    return FakeAsyncEngine(model, model.tokenizer, step_seconds=0.002)


@pytest.fixture(scope="module")
def base(engine, tmp_path_factory):
    from llmlab.infer.chat import read_chat_template

    directory = tiny_checkpoint(tmp_path_factory.mktemp("template") / "model")
    settings = ServeSettings(NAME, CONTEXT, read_chat_template(directory), API_KEY, max_body_bytes=1024 * 1024)
    with app_server(create_app(engine, settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0)


def assert_error(status, body, expected_status, param=None, *words):
    """An OpenAI error body of the expected status naming param and holding words."""
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param, body
    for word in words:
        assert word in body["error"]["message"], body


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [model.id for model in models] == [NAME]
    assert models[0].object == "model"


def test_greedy_completion_is_generate_s_answer(client, model):
    answer = client.completions.create(model=NAME, prompt="The cat", max_tokens=8, temperature=0)
    reference = generate(model, "The cat", max_new_tokens=8)
    choice = answer.choices[0]
    assert (choice.index, choice.text, choice.finish_reason) == (0, reference.text[0], reference.finish_reasons[0])
    assert answer.object == "text_completion" and answer.model == NAME and answer.id.startswith("cmpl-")
    prompt_tokens = len(model.tokenizer.encode("The cat").ids)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt_tokens, len(reference.tokens[0]))
    assert answer.usage.total_tokens == prompt_tokens + len(reference.tokens[0])


def test_prompts_as_strings_and_token_ids_give_a_choice_each(client, model):
    ids = model.tokenizer.encode("The dog").ids
    for prompt in (["The cat", "The dog"], [model.tokenizer.encode("The cat").ids, ids]):
        answer = client.completions.create(model=NAME, prompt=prompt, max_tokens=4, temperature=0)
        assert [choice.index for choice in answer.choices] == [0, 1]
        assert answer.choices[1].text == generate(model, ids, max_new_tokens=4).text[0]


def test_n_samples_with_a_seed_repeat_and_greedy_n_gives_copies(client, engine):
    ask = dict(model=NAME, prompt=["The cat", "The"], max_tokens=5, n=3, temperature=1.0, seed=7)
    first, second = client.completions.create(**ask), client.completions.create(**ask)
    assert [choice.index for choice in first.choices] == list(range(6))
    assert [choice.text for choice in first.choices] == [choice.text for choice in second.choices]
    assert engine.configs[-1].n == 3 and engine.configs[-1].seed == 7 and engine.configs[-1].do_sample
    greedy = client.completions.create(model=NAME, prompt="The cat", max_tokens=5, n=3, temperature=0)
    assert len({choice.text for choice in greedy.choices}) == 1 and len(greedy.choices) == 3
    assert engine.configs[-1].n == 1 and not engine.configs[-1].do_sample


def test_sampling_fields_reach_the_engine(client, engine):
    client.completions.create(model=NAME, prompt="The", max_tokens=6, temperature=0.5, top_p=0.9, seed=1,
                              presence_penalty=0.5, frequency_penalty=-0.5, stop=["x", "y"],
                              extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "min_tokens": 2})
    config = engine.configs[-1]
    assert (config.temperature, config.top_p, config.top_k, config.min_p, config.repetition_penalty) == (
        0.5, 0.9, 5, 0.1, 1.2)
    assert (config.presence_penalty, config.frequency_penalty, config.stop, config.min_new_tokens) == (
        0.5, -0.5, ("x", "y"), 2)


def test_streamed_completion_joins_to_the_whole_one(client):
    ask = dict(model=NAME, prompt="The cat", max_tokens=8, temperature=0)
    whole = client.completions.create(**ask).choices[0]
    chunks = list(client.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == whole.text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == whole.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_completion_logprobs_and_echo(client, model):
    prompt = model.tokenizer.encode("The cat sat").ids
    answer = client.completions.create(model=NAME, prompt=prompt, max_tokens=3, temperature=0, logprobs=2,
                                       echo=True)
    logprobs = answer.choices[0].logprobs
    total = len(prompt) + answer.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == total
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(2 <= len(top) <= 3 for top in logprobs.top_logprobs[1:])
    assert answer.choices[0].text.startswith(model.tokenizer.decode(prompt))
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0
    scored = client.completions.create(model=NAME, prompt=prompt, max_tokens=0, logprobs=0, echo=True)
    assert scored.usage.completion_tokens == 0 and len(scored.choices[0].logprobs.tokens) == len(prompt)
    assert scored.choices[0].logprobs.token_logprobs[1:] == logprobs.token_logprobs[1:len(prompt)]


def test_chat_completion_whole_and_streamed(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_chat_logprobs_and_max_completion_tokens(client):
    answer = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                            max_completion_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens <= 4
    assert all(len(entry.top_logprobs) == 3 and entry.logprob <= 0 for entry in content)
    assert content[0].bytes == list(content[0].token.encode())


def test_async_client_answers_concurrently(base):
    async def ask_four():
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0) as client:
            return await asyncio.gather(*(client.completions.create(model=NAME, prompt="The", max_tokens=3,
                                                                    temperature=0) for _ in range(4)))

    assert len({answer.choices[0].text for answer in asyncio.run(ask_four())}) == 1


@pytest.mark.parametrize("body, param, words", [
    ("{not json", None, ["not valid JSON"]),
    ('["a list"]', None, ["JSON object"]),
    ({"model": NAME}, "prompt", ["missing", "prompt"]),
    ({"model": NAME, "prompt": "hi", "max_tokens": "many"}, "max_tokens", ["max_tokens"]),
    ({"model": NAME, "prompt": {"text": "hi"}}, "prompt", ["prompt"]),
    ({"model": NAME, "prompt": "hi", "n": 1000}, "n", ["n", "128"]),
    ({"model": NAME, "prompt": "hi", "temperature": -1}, "temperature", ["temperature"]),
    ({"model": NAME, "prompt": "hi", "logprobs": 21}, "logprobs", ["logprobs"]),
    ({"model": NAME, "prompt": "hi", "max_tokens": 0}, "max_tokens", ["echo"]),
    ({"model": NAME, "prompt": "hi", "stop": ""}, "stop", ["stop"]),
    ({"model": NAME, "prompt": "", "max_tokens": 2}, "prompt", ["empty"]),
    ({"model": NAME, "prompt": [1, 10**6]}, "prompt", ["1000000", "vocabulary"]),
    ({"model": NAME, "prompt": "hi", "max_tokens": 100}, "max_tokens", ["100", str(CONTEXT)]),
    ({"model": NAME, "prompt": "hi", "min_tokens": 5, "max_tokens": 2}, "min_tokens", ["5", "2"]),
])
def test_bad_completion_requests_are_400_naming_the_field(base, client, body, param, words):
    status, answer, _ = post(base, "/v1/completions", body)
    assert_error(status, answer, 400, param, *words)
    assert client.completions.create(model=NAME, prompt="The", max_tokens=1).choices  # still serving


@pytest.mark.parametrize("body, param, words", [
    ({"model": NAME, "messages": []}, "messages", ["messages"]),
    ({"model": NAME, "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", ["role"]),
    ({"model": NAME, "messages": "hi"}, "messages", ["messages"]),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs",
     ["logprobs"]),
])
def test_bad_chat_requests_are_400_naming_the_field(base, body, param, words):
    status, answer, _ = post(base, "/v1/chat/completions", body)
    assert_error(status, answer, 400, param, *words)


def test_unknown_model_is_404_and_unknown_endpoint_too(base):
    status, answer, _ = post(base, "/v1/completions", {"model": "gpt-9", "prompt": "hi"})
    assert_error(status, answer, 404, "model", "gpt-9", NAME)
    status, body, _ = get(base, "/v1/nothing")
    assert_error(status, json.loads(body), 404, None, "/v1/nothing")


def test_missing_or_wrong_key_is_401_only_under_v1(base):
    for key in (None, "wrong-key", API_KEY + "x"):
        status, answer, _ = post(base, "/v1/completions", {"model": NAME, "prompt": "hi"}, key=key)
        assert_error(status, answer, 401, None, "API key")
    assert get(base, "/health", key=None)[0] == 200
    assert post(base, "/tokenize", {"prompt": "hi"}, key=None)[0] == 200


def test_a_body_over_the_limit_is_413(base, client):
    prompt = "a" * (10 * 1024 * 1024)
    status, answer, _ = post(base, "/v1/completions", {"model": NAME, "prompt": prompt})
    assert_error(status, answer, 413, None, "larger than")
    assert client.completions.create(model=NAME, prompt="The", max_tokens=1).choices


def test_a_chunked_body_over_the_limit_is_413(base):
    status, answer, _ = post(base, "/v1/completions", iter([b'{"prompt": "', b"a" * (2 * 1024 * 1024), b'"}']))
    assert_error(status, answer, 413, None, "larger than")


def test_a_full_queue_is_503_with_retry_after(base, engine):
    engine.full = True
    try:
        status, answer, headers = post(base, "/v1/completions", {"model": NAME, "prompt": "hi", "stream": True})
    finally:
        engine.full = False
    assert_error(status, answer, 503, None, "full")
    assert int(headers["Retry-After"]) >= 1


def test_a_client_leaving_mid_stream_aborts_its_request(base, engine, client):
    body = json.dumps({"model": NAME, "prompt": "The", "max_tokens": 60, "temperature": 0, "stream": True,
                       "ignore_eos": True, "unknown_field": None}).encode()
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: "
                           + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert b"200" in connection.recv(4096).split(b"\r\n")[0]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(engine.aborted) == 0:
        time.sleep(0.05)
    assert engine.aborted, "the request of the client that left was not aborted"
    assert client.completions.create(model=NAME, prompt="The", max_tokens=1).choices


def test_tokenize_and_detokenize_round_trip(base, model):
    status, answer, _ = post(base, "/tokenize", {"prompt": "The cat sat"})
    assert status == 200 and answer["tokens"] == model.tokenizer.encode("The cat sat").ids
    assert answer["count"] == len(answer["tokens"]) and answer["max_model_len"] == CONTEXT
    status, answer, _ = post(base, "/detokenize", {"tokens": answer["tokens"]})
    assert (status, answer["prompt"]) == (200, "The cat sat")
    status, answer, _ = post(base, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and answer["count"] > 1
    assert_error(*post(base, "/detokenize", {"tokens": [-1]})[:2], 400, "tokens", "-1")


def test_metrics_name_the_engine_and_latency_figures(base, client):
    client.completions.create(model=NAME, prompt="The", max_tokens=3)
    status, body, headers = get(base, "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("llmlab_requests_waiting", "llmlab_requests_running", "llmlab_kv_blocks_used",
                 "llmlab_prefix_cache_hit_rate", "llmlab_generation_tokens_total",
                 "llmlab_time_to_first_token_seconds_bucket", "llmlab_time_per_output_token_seconds_count"):
        assert name in text, name


def test_the_chat_page_is_one_self_contained_file(base):
    status, body, headers = get(base, "/", key=None)
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "/v1/chat/completions" in page and "<script>" in page
    for external in ('src="http', "src='http", 'href="http', "@import", "//cdn"):
        assert external not in page

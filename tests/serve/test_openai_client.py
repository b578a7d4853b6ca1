"""`llmlab serve` end to end, driven by the official openai client: greedy answers equal llmlab.infer.generate's on
the same model, echoed prompt log-probabilities equal the model's own log-softmax, and the server keeps serving after
every fault a client can cause."""

import asyncio
import json
import math
import socket
import time

import pytest
import torch

import llmlab
from llmlab.infer.chat import chat_prompt_ids, read_chat_template
from llmlab.infer.generate import generate
from tests.serve.servers import API_KEY, cli_server, get, post, tiny_checkpoint

openai = pytest.importorskip("openai")
pytest.importorskip("llmlab.infer.engine", reason="llmlab serve runs on llmlab.infer.engine")

NAME = "tiny"
PROMPTS = ["The cat sat on the mat.", "The", "User: hello there\nAssistant: hi, how can I help?", "The dog ran"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("e2e") / "model")


@pytest.fixture(scope="module")
def model(checkpoint):
    return llmlab.load(checkpoint)


@pytest.fixture(scope="module")
def base(checkpoint):
    with cli_server(checkpoint, "--served-model-name", NAME, "--max-num-seqs", "8",
                    env={"LLMLAB_API_KEY": API_KEY}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0)


def metric(base: str, name: str) -> float:
    """The value of an unlabelled metric on /metrics."""
    text = get(base, "/metrics")[1].decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_greedy_completions_equal_generate(client, model):
    answer = client.completions.create(model=NAME, prompt=PROMPTS, max_tokens=10, temperature=0)
    reference = generate(model, PROMPTS, max_new_tokens=10)
    assert [choice.text for choice in answer.choices] == reference.text
    assert [choice.finish_reason for choice in answer.choices] == reference.finish_reasons
    assert answer.usage.completion_tokens == sum(map(len, reference.tokens))
    ids = model.tokenizer.encode(PROMPTS[0]).ids
    assert client.completions.create(model=NAME, prompt=ids, max_tokens=10, temperature=0).choices[0].text == \
        reference.text[0]


def test_greedy_chat_equals_generate_on_the_template(client, model, checkpoint):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    answer = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0)
    prompt = chat_prompt_ids(model.tokenizer, messages, read_chat_template(checkpoint))
    assert answer.choices[0].message.content == generate(model, prompt, max_new_tokens=10).text[0]
    assert answer.usage.prompt_tokens == len(prompt)


def test_streams_join_to_the_whole_answers(client):
    ask = dict(model=NAME, prompt=PROMPTS[0], max_tokens=10, temperature=0)
    whole = client.completions.create(**ask).choices[0].text
    assert "".join(chunk.choices[0].text for chunk in client.completions.create(**ask, stream=True)) == whole
    messages = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_async_clients_at_once_each_get_generate_s_answer(base, model):
    async def ask_all():
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0) as client:
            return await asyncio.gather(*(client.completions.create(model=NAME, prompt=prompt, max_tokens=8,
                                                                    temperature=0) for prompt in PROMPTS * 3))

    answers = asyncio.run(ask_all())
    assert [answer.choices[0].text for answer in answers] == generate(model, PROMPTS * 3, max_new_tokens=8).text


def test_seeded_samples_repeat_and_n_gives_n_choices(client):
    ask = dict(model=NAME, prompt="The", max_tokens=8, temperature=1.0, n=3, seed=11)
    first, second = client.completions.create(**ask), client.completions.create(**ask)
    assert [choice.index for choice in first.choices] == [0, 1, 2]
    assert [choice.text for choice in first.choices] == [choice.text for choice in second.choices]
    other = client.completions.create(**{**ask, "seed": 12})
    assert [choice.text for choice in other.choices] != [choice.text for choice in first.choices]


def test_a_stop_string_ends_the_text_before_it(client):
    greedy = client.completions.create(model=NAME, prompt="The", max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 2]
    assert stop
    cut = client.completions.create(model=NAME, prompt="The", max_tokens=12, temperature=0, stop=[stop, "zzzz"],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert (cut.text, cut.finish_reason) == (greedy[:greedy.index(stop)], "stop")


def test_echoed_prompt_logprobs_equal_the_model_s_log_softmax(client, model):
    ids = model.tokenizer.encode(PROMPTS[2]).ids
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    for max_tokens, logprobs in ((0, 10), (1, 1)):  # what older and newer lm-evaluation-harness send
        choice = client.completions.create(model=NAME, prompt=ids, max_tokens=max_tokens, logprobs=logprobs,
                                           echo=True, temperature=0).choices[0]
        token_logprobs = choice.logprobs.token_logprobs
        assert len(token_logprobs) == len(ids) + max_tokens and token_logprobs[0] is None
        for position in range(1, len(ids)):
            assert math.isclose(token_logprobs[position], float(reference[position - 1, ids[position]]),
                                abs_tol=1e-5)
            best = float(reference[position - 1].max())
            assert math.isclose(max(choice.logprobs.top_logprobs[position].values()), best, abs_tol=1e-5)
        if max_tokens:
            assert math.isclose(token_logprobs[-1], float(reference[-1].max()), abs_tol=1e-5)  # greedy's own token


def test_generated_logprobs_equal_generate_s(client, model):
    answer = client.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=6, temperature=0, logprobs=3)
    reference = generate(model, PROMPTS[0], max_new_tokens=6, logprobs=3)
    for got, expected in zip(answer.choices[0].logprobs.token_logprobs, reference.logprobs[0], strict=True):
        assert math.isclose(got, expected, abs_tol=1e-5)
    content = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                             temperature=0, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in content)


def assert_still_serving(client):
    assert client.completions.create(model=NAME, prompt="The", max_tokens=2, temperature=0).choices[0].text is not None


@pytest.mark.parametrize("path, body, status", [
    ("/v1/completions", "{not json", 400),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": "ten"}, 400),
    ("/v1/completions", {"model": NAME, "prompt": 42}, 400),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "n": 1000}, 400),
    ("/v1/completions", {"model": NAME, "prompt": "hi", "max_tokens": 10**6}, 400),
    ("/v1/chat/completions", {"model": NAME, "messages": []}, 400),
    ("/v1/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ("/v1/completions", {"model": NAME, "prompt": "a" * (10 * 1024 * 1024)}, 413),
])
def test_faults_get_their_status_and_the_server_serves_on(base, client, path, body, status):
    got, answer, _ = post(base, path, body)
    assert got == status and set(answer["error"]) == {"message", "type", "param", "code"}, answer
    assert_still_serving(client)


def test_a_wrong_key_is_401(base, client):
    for key in ("wrong", None):
        status, answer, _ = post(base, "/v1/completions", {"model": NAME, "prompt": "hi"}, key=key)
        assert status == 401 and "API key" in answer["error"]["message"]
    assert_still_serving(client)


def test_clients_leaving_mid_stream_free_their_blocks(base, client):
    body = json.dumps({"model": NAME, "prompt": "The", "max_tokens": 200, "ignore_eos": True, "stream": True})
    port = int(base.rsplit(":", 1)[1])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
            assert b" 200 " in connection.recv(4096).split(b"\r\n")[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (metric(base, "llmlab_requests_running") or
                                           metric(base, "llmlab_kv_blocks_used")):
        time.sleep(0.1)
    assert metric(base, "llmlab_requests_running") == 0 and metric(base, "llmlab_kv_blocks_used") == 0
    assert_still_serving(client)


def test_metrics_count_the_generated_tokens(base, client):
    before = metric(base, "llmlab_generation_tokens_total")
    client.completions.create(model=NAME, prompt="The", max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    assert metric(base, "llmlab_generation_tokens_total") - before == 5
    assert metric(base, "llmlab_time_to_first_token_seconds_count") >= 1

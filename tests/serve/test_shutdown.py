"""SIGTERM stops `llmlab serve` gracefully: new requests are turned away, a running stream finishes whole, then the
process exits with status 0."""

import signal
import urllib.request

import pytest

from tests.serve.servers import cli_server, tiny_checkpoint

openai = pytest.importorskip("openai")
pytest.importorskip("llmlab.infer.engine", reason="llmlab serve runs on llmlab.infer.engine")

NEW_TOKENS = 200


def test_sigterm_lets_a_running_stream_finish_then_exits(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "model")
    with cli_server(checkpoint, "--served-model-name", "tiny") as (base, process):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        stream = client.completions.create(model="tiny", prompt="The", max_tokens=NEW_TOKENS, stream=True,
                                           stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = [next(stream)]
        process.send_signal(signal.SIGTERM)
        chunks += list(stream)
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
        assert chunks[-1].usage.completion_tokens == NEW_TOKENS
        assert process.wait(60) == 0
        with pytest.raises(OSError):  # nobody listens any more
            urllib.request.urlopen(f"{base}/health", timeout=5)

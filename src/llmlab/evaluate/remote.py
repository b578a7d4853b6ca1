"""A model behind an OpenAI-compatible server (`llmlab serve`, vLLM, …) answering evaluation requests over
/v1/completions, as lm-evaluation-harness's local-completions model asks them:

- loglikelihood: the prompt context + continuation with echo, logprobs 1 and max_tokens 0; the continuation's tokens
  are those the server's text offsets place after the context (whose trailing spaces join the continuation, as
  lm-eval's split does locally), their log-probabilities summed, greedy when each is its position's top token;
- generation: the prompt with max_tokens, stop, temperature, n and seed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence

from llmlab.errors import ConfigError
from llmlab.evaluate.tasks import GenerationOptions


def is_server_url(model: str) -> bool:
    """Whether MODEL names a server rather than a checkpoint directory."""
    return str(model).startswith(("http://", "https://"))


class RemoteModel:
    """An OpenAI-compatible server at url (its base, .../v1, or .../v1/completions); `model_name` defaults to the
    first model /v1/models lists."""

    tokenizer = None

    def __init__(self, url: str, model_name: str | None = None, api_key: str | None = None, batch_size: int = 16,
                 timeout: float = 600.0):
        base = url.rstrip("/")
        base = base.removesuffix("/completions").removesuffix("/chat")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.api_key, self.batch_size, self.timeout = api_key, batch_size, timeout
        self.can_generate = True
        if model_name is None:
            models = self._request("/models").get("data") or []
            if not models:
                raise ConfigError(f"the server at {self.base} lists no model at /models; name one with --model-name.")
            model_name = models[0]["id"]
        self.model_name = model_name
        self.identity = f"{self.base}#{model_name}"

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers,
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = error.reason
            raise ConfigError(f"the server at {self.base} answered {path} with {error.code}: {message}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ConfigError(f"the server at {self.base} cannot be reached ({reason}).") from None

    def _completions(self, prompts: list[str], **fields) -> list[dict]:
        """The choices of one /completions request, in order."""
        answer = self._request("/completions", {"model": self.model_name, "prompt": prompts, **fields})
        return sorted(answer["choices"], key=lambda choice: choice["index"])

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool, int]]:
        """(log p(continuation | context), greedy, continuation tokens) of each (context, continuation)."""
        results = []
        for start in range(0, len(requests), self.batch_size):
            batch = requests[start:start + self.batch_size]
            choices = self._completions([context + continuation for context, continuation in batch], echo=True,
                                        max_tokens=0, logprobs=1, temperature=0)
            for (context, _), choice in zip(batch, choices):
                results.append(_continuation_score(choice["logprobs"], len(context.rstrip()), self.base))
        return results

    def loglikelihood_rolling(self, texts):
        """Not offered: a server's echo scores a text's first token after nothing."""
        raise ConfigError("perplexity tasks need a local checkpoint; a server's echo gives the first token no "
                          "log-probability.")

    def generate(self, prompts: Sequence[str], options: GenerationOptions, seed: int = 0) -> list[list[str]]:
        """options.n completions of each prompt from the server."""
        outputs = []
        fields = {"max_tokens": options.max_new_tokens, "temperature": options.temperature, "n": options.n,
                  "seed": seed}
        if options.until:
            fields["stop"] = list(options.until)
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start:start + self.batch_size])
            texts = [choice["text"] for choice in self._completions(batch, **fields)]
            outputs += [texts[i * options.n:(i + 1) * options.n] for i in range(len(batch))]
        return outputs

    def describe(self) -> dict:
        """What results.json records of the model."""
        return {"kind": "server", "url": self.base, "model": self.model_name}


def _continuation_score(logprobs: dict, boundary: int, where: str) -> tuple[float, bool, int]:
    """Sum the echoed log-probabilities of the tokens that start at or after the character boundary."""
    offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
    first = next((i for i, offset in enumerate(offsets) if offset >= boundary), len(offsets))
    if first == 0 or first == len(offsets) or any(value is None for value in values[first:]):
        raise ConfigError(f"the server at {where} gave no log-probabilities for a continuation (an empty context "
                          "or continuation cannot be scored through a server).")
    tops = logprobs["top_logprobs"][first:]
    greedy = all(token == max(top, key=top.get) for token, top in zip(logprobs["tokens"][first:], tops))
    return float(sum(values[first:])), greedy, len(values) - first

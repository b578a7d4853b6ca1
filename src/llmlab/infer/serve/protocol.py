"""The request bodies of the OpenAI-compatible endpoints, as pydantic models with OpenAI's (and vLLM's) field names.

Ranges are checked here so that a bad value is refused with a 400 naming the request's field; fields a client may
send that this server does not use (user, logit_bias left empty, …) are accepted and ignored."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 128  # samples per prompt; more is refused rather than queued
MAX_STOP = 64  # stop strings per request (OpenAI allows 4, vLLM any number)
MAX_LOGPROBS = 20  # top alternatives per token, OpenAI's limit

Prompt = Union[str, list[int], list[str], list[list[int]]]
Stop = Union[str, list[str], None]


class Request(BaseModel):
    """Fields every request may carry; unknown fields are ignored as OpenAI ignores them."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(Request):
    """stream_options: whether the last chunk before [DONE] carries the usage."""

    include_usage: bool = False


class SamplingFields(Request):
    """The sampling fields that completions and chat completions share (vLLM's extras included)."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stop: Stop = Field(None, max_length=MAX_STOP)
    seed: int | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: Prompt
    max_tokens: int | None = Field(None, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    suffix: str | None = None


class TextPart(Request):
    """One part of a message's content given as a list (only text parts are understood)."""

    type: Literal["text"]
    text: str


class ChatMessage(Request):
    """One message of a conversation; OpenAI's newer "developer" role is taken as "system"."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's content as one string."""
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict] | None = None
    response_format: dict | None = None


class TokenizeRequest(Request):
    """POST /tokenize: a text prompt, or a conversation rendered as chat completions renders it."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(Request):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[int]

"""From an OpenAI request to what the engine is asked: the prompts as token ids, a GenerationConfig, the number of new
tokens, prompt log-probabilities; every check a request can fail is made here, before anything is queued."""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.errors import LlmlabError
from llmlab.infer.config import GenerationConfig
from llmlab.infer.serve.errors import bad_request, from_llmlab_error
from llmlab.infer.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for completions; chat defaults to the context left
OPENAI_TEMPERATURE = 1.0  # OpenAI's default when neither the request nor the checkpoint chooses


@dataclass(frozen=True)
class Submission:
    """What one request asks of the engine: each prompt is one engine request of config.n sequences, repeated
    copies times into the n choices (greedy decoding with n > 1 gives n identical sequences, so it runs once)."""

    prompts: list[list[int]]
    config: GenerationConfig
    max_new_tokens: int
    prompt_logprobs: int | None
    copies: int

    @property
    def n(self) -> int:
        """The choices per prompt."""
        return self.config.n * self.copies


def _config(request: SamplingFields, base: GenerationConfig, checkpoint_defaults: bool, max_new_tokens: int,
            logprobs: int | None, extra_stop: tuple[str, ...] = ()) -> tuple[GenerationConfig, int]:
    """The GenerationConfig of a request over the checkpoint's defaults (base), and how many copies of it make n."""
    if request.logit_bias:
        raise bad_request("logit_bias is not supported.", "logit_bias")
    if request.temperature is not None:
        do_sample = request.temperature > 0
        temperature = request.temperature if do_sample else base.temperature
    elif checkpoint_defaults:  # the checkpoint's generation_config.json chooses, as vLLM's --generation-config auto
        do_sample, temperature = base.do_sample, base.temperature
    else:
        do_sample, temperature = True, OPENAI_TEMPERATURE
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    if not all(stop):
        raise bad_request("The field 'stop' must not hold an empty string.", "stop")
    if request.min_tokens > max_new_tokens:
        raise bad_request(f"min_tokens ({request.min_tokens}) must not exceed max_tokens ({max_new_tokens}).",
                          "min_tokens")

    def pick(value, default):
        return default if value is None else value

    changes = dict(
        max_new_tokens=max(1, max_new_tokens), min_new_tokens=request.min_tokens, do_sample=do_sample,
        temperature=temperature, top_p=pick(request.top_p, base.top_p),
        top_k=max(0, pick(request.top_k, base.top_k)),  # OpenAI/vLLM's -1 and llmlab's 0 both mean every token
        min_p=pick(request.min_p, base.min_p), repetition_penalty=pick(request.repetition_penalty,
                                                                        base.repetition_penalty),
        presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty,
        stop=tuple(dict.fromkeys(stop + extra_stop)), include_stop_str_in_output=request.include_stop_str_in_output,
        seed=request.seed, logprobs=logprobs, ignore_eos=request.ignore_eos, num_beams=1,
        n=request.n if do_sample else 1)
    try:
        config = base.replace(**changes)
    except LlmlabError as error:
        raise from_llmlab_error(error) from None
    return config, 1 if do_sample else request.n


def _new_tokens(requested: int | None, default: int | None, prompts: list[list[int]], max_model_len: int,
                field: str) -> int:
    """The new tokens to generate: requested (else default, else all the context left), refused naming both numbers
    when a prompt plus them would not fit the context."""
    longest = max(map(len, prompts))
    if longest >= max_model_len and requested != 0:
        raise bad_request(f"The prompt has {longest} tokens, but the model's context length is {max_model_len} "
                          f"tokens, which leaves no room for new ones; shorten the prompt.", "prompt")
    if requested is None:
        room = max_model_len - longest
        return room if default is None else min(default, room)
    if longest + requested > max_model_len:
        raise bad_request(f"The prompt has {longest} tokens and {field} asks for {requested} more, but the model's "
                          f"context length is {max_model_len} tokens; shorten the prompt or lower {field}.", field)
    return requested


def check_token_ids(ids: list[int], vocab_size: int, where: str) -> None:
    """Refuse an empty prompt or token ids outside the vocabulary, naming where."""
    if not ids:
        raise bad_request(f"The {where} is empty; give at least one token.", "prompt")
    bad = next((token for token in ids if not 0 <= token < vocab_size), None)
    if bad is not None:
        raise bad_request(f"The {where} holds token id {bad}, outside the vocabulary of {vocab_size} tokens.",
                          "prompt")


def completion_prompts(prompt, tokenizer, vocab_size: int) -> tuple[list[list[int]], list[str]]:
    """A completion request's prompts as token ids and as text (a string, strings, token ids or lists of them)."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) or not prompt:
        prompt = [prompt]
    ids, texts = [], []
    for index, item in enumerate(prompt):
        where = "prompt" if len(prompt) == 1 else f"prompt {index}"
        tokens = tokenizer.encode(item).ids if isinstance(item, str) else list(item)
        check_token_ids(tokens, vocab_size, where)
        ids.append(tokens)
        texts.append(item if isinstance(item, str) else tokenizer.decode(tokens, skip_special_tokens=False))
    return ids, texts


def completion_submission(request: CompletionRequest, prompts: list[list[int]], base: GenerationConfig,
                          checkpoint_defaults: bool, max_model_len: int) -> Submission:
    """What a completion request asks of the engine."""
    if request.suffix:
        raise bad_request("suffix is not supported.", "suffix")
    if request.best_of is not None and request.best_of != request.n:
        raise bad_request("best_of must equal n (or be left out); choosing the best of several is not supported.",
                          "best_of")
    if request.max_tokens == 0 and not request.echo:
        raise bad_request("max_tokens must be at least 1 unless echo is true.", "max_tokens")
    new = _new_tokens(request.max_tokens, DEFAULT_COMPLETION_TOKENS, prompts, max_model_len, "max_tokens")
    config, copies = _config(request, base, checkpoint_defaults, new, request.logprobs)
    prompt_logprobs = request.logprobs if request.echo and request.logprobs is not None else None
    return Submission(prompts, config, new, prompt_logprobs, copies)


def chat_submission(request: ChatCompletionRequest, prompt: list[int], base: GenerationConfig,
                    checkpoint_defaults: bool, max_model_len: int, extra_stop: tuple[str, ...]) -> Submission:
    """What a chat completion request asks of the engine."""
    if request.tools:
        raise bad_request("tools are not supported.", "tools")
    if request.response_format and request.response_format.get("type", "text") != "text":
        raise bad_request("Only the text response_format is supported.", "response_format")
    if request.top_logprobs is not None and not request.logprobs:
        raise bad_request("top_logprobs needs logprobs to be true.", "top_logprobs")
    requested = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    field = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    new = _new_tokens(requested, None, [prompt], max_model_len, field)
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    config, copies = _config(request, base, checkpoint_defaults, new, logprobs, extra_stop)
    return Submission([prompt], config, new, None, copies)

"""The bodies the endpoints answer with, in OpenAI's shapes: whole completions and chat completions, and the chunks
of their streams, built from the engine's cumulative RequestOutputs."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from llmlab.data.tokenizer import decode_bytes
from llmlab.infer.detokenize import REPLACEMENT
from llmlab.infer.serve.params import Submission


def new_id(prefix: str) -> str:
    """A fresh response id such as cmpl-3f…"""
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(data) -> str:
    """One server-sent event carrying data as JSON (or the literal [DONE])."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class TokenStrings:
    """Each token's own text, remembered: what logprobs report per token. A token ending inside a character is
    written as OpenAI writes it, "bytes:\\xe2\\x80", so that different tokens never share one string."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.known: dict[int, tuple[str, bytes]] = {}

    def _entry(self, token: int) -> tuple[str, bytes]:
        entry = self.known.get(token)
        if entry is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            raw = text.encode("utf-8")
            if REPLACEMENT in text:
                raw = decode_bytes(self.tokenizer, [token])
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)
            entry = self.known[token] = (text, raw)
        return entry

    def __call__(self, token: int) -> str:
        """The text of one token."""
        return self._entry(token)[0]

    def bytes(self, token: int) -> list[int]:
        """The UTF-8 bytes of one token."""
        return list(self._entry(token)[1])


def _sorted(top: dict[int, float]) -> list[tuple[int, float]]:
    return sorted(top.items(), key=lambda item: -item[1])


@dataclass
class Progress:
    """What has been reported of one choice: characters of text, tokens, text offset, and whether it finished."""

    text: int = 0
    tokens: int = 0
    offset: int = 0
    echoed: bool = False
    finished: bool = False


@dataclass
class Usage:
    """Token counts of a request."""

    prompt: int = 0
    completion: dict[int, int] = field(default_factory=dict)  # choice index -> tokens

    def body(self) -> dict:
        """OpenAI's usage object."""
        completion = sum(self.completion.values())
        return {"prompt_tokens": self.prompt, "completion_tokens": completion,
                "total_tokens": self.prompt + completion}


class Answer:
    """Turns a submission's outputs into OpenAI's bodies; chat selects the chat completion shapes."""

    def __init__(self, submission: Submission, model_name: str, tokenizer, *, chat: bool, echo: bool = False,
                 prompt_texts: list[str] | None = None, logprobs: bool = False):
        self.submission, self.model_name, self.chat, self.echo = submission, model_name, chat, echo
        self.prompt_texts = prompt_texts or [""] * len(submission.prompts)
        self.logprobs = logprobs
        self.strings = TokenStrings(tokenizer)
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.usage = Usage(prompt=sum(map(len, submission.prompts)))
        self.progress: dict[int, Progress] = {}

    def _head(self, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_name}

    def _choices(self, prompt: int, output):
        """(choice index, sequence output) of every choice of one prompt."""
        n, copies = self.submission.n, self.submission.copies
        for j in range(n):
            yield prompt * n + j, output.outputs[j // copies]

    # logprobs in the two shapes
    def _completion_logprobs(self, tokens: list[int], logprobs: list, tops: list, progress: Progress) -> dict:
        strings = [self.strings(token) for token in tokens]
        offsets = []
        for text in strings:
            offsets.append(progress.offset)
            progress.offset += len(text)
        top_logprobs = []
        for token, logprob, top in zip(tokens, logprobs, tops):
            if logprob is None:
                top_logprobs.append(None)
                continue
            merged = {**(top or {}), token: logprob}
            top_logprobs.append({self.strings(other): value for other, value in _sorted(merged)})
        return {"tokens": strings, "token_logprobs": list(logprobs), "top_logprobs": top_logprobs,
                "text_offset": offsets}

    def _chat_logprobs(self, tokens: list[int], logprobs: list, tops: list) -> dict:
        def entry(token, logprob):
            return {"token": self.strings(token), "logprob": logprob, "bytes": self.strings.bytes(token)}

        return {"content": [{**entry(token, logprob), "top_logprobs": [entry(*item) for item in _sorted(top or {})]}
                            for token, logprob, top in zip(tokens, logprobs, tops)]}

    def _echoed(self, prompt: int, output) -> tuple[list[int], list, list]:
        """The prompt's tokens with their log-probabilities (the first one None) and top alternatives."""
        ids = self.submission.prompts[prompt]
        entries = output.prompt_logprobs or [None] * len(ids)
        return (ids, [None if entry is None else entry.logprob for entry in entries],
                [None if entry is None else entry.top for entry in entries])

    def _piece(self, prompt: int, output, sequence, progress: Progress) -> dict | None:
        """The new part of one choice since progress (text, logprobs, finish reason), None when nothing is new."""
        text = sequence.text[progress.text:]
        tokens = sequence.token_ids[progress.tokens:]
        finish = sequence.finish_reason
        echo = self.echo and not progress.echoed
        if not (text or tokens or finish or echo):
            return None
        logprobs = None
        if self.logprobs:
            lps = list(sequence.logprobs or [None] * len(sequence.token_ids))[progress.tokens:]
            tops = list(sequence.top_logprobs or [None] * len(sequence.token_ids))[progress.tokens:]
            if echo:
                ids, prompt_lps, prompt_tops = self._echoed(prompt, output)
                tokens, lps, tops = ids + tokens, prompt_lps + lps, prompt_tops + tops
            logprobs = (self._chat_logprobs(tokens, lps, tops) if self.chat
                        else self._completion_logprobs(tokens, lps, tops, progress))
        if echo:
            text = self.prompt_texts[prompt] + text
        progress.text, progress.tokens = max(progress.text, len(sequence.text)), len(sequence.token_ids)
        progress.echoed, progress.finished = True, finish is not None
        return {"text": text, "logprobs": logprobs, "finish_reason": finish}

    def _choice_body(self, index: int, piece: dict, chunk: bool, first: bool) -> dict:
        if not self.chat:
            return {"index": index, **piece}
        if chunk:
            delta = {"role": "assistant", "content": piece["text"]} if first else {"content": piece["text"]}
            return {"index": index, "delta": delta, "logprobs": piece["logprobs"],
                    "finish_reason": piece["finish_reason"]}
        return {"index": index, "message": {"role": "assistant", "content": piece["text"]},
                "logprobs": piece["logprobs"], "finish_reason": piece["finish_reason"]}

    def whole(self, finals: list) -> dict:
        """The whole answer from every prompt's last output."""
        choices = []
        for prompt, output in enumerate(finals):
            for index, sequence in self._choices(prompt, output):
                progress = self.progress.setdefault(index, Progress())
                choices.append(self._choice_body(index, self._piece(prompt, output, sequence, progress), False, True))
                self.usage.completion[index] = len(sequence.token_ids)
        return {**self._head(False), "choices": choices, "usage": self.usage.body()}

    def chunks(self, prompt: int, output, include_usage: bool) -> list[str]:
        """The server-sent events of one new output of a prompt."""
        events = []
        for index, sequence in self._choices(prompt, output):
            first = index not in self.progress
            progress = self.progress.setdefault(index, Progress())
            if progress.finished:
                continue
            piece = self._piece(prompt, output, sequence, progress)
            self.usage.completion[index] = len(sequence.token_ids)
            if piece is not None or first:
                piece = piece or {"text": "", "logprobs": None, "finish_reason": None}
                body = {**self._head(True), "choices": [self._choice_body(index, piece, True, first)]}
                if include_usage:
                    body["usage"] = None
                events.append(sse(body))
        return events

    def last_chunks(self, include_usage: bool) -> list[str]:
        """The usage chunk (when asked for) and [DONE]."""
        events = [sse({**self._head(True), "choices": [], "usage": self.usage.body()})] if include_usage else []
        return events + [sse("[DONE]")]

"""Prompt templates (survey §5.1): a prompt — plain text, chat messages, or Alpaca's instruction and input —
rendered as the text the model reads before its reply, and the token ids and loss labels of prompt and reply.

Templates: ``alpaca`` (Stanford Alpaca's two prompts), ``chatml``, ``llama2`` ([INST] … [/INST] with a <<SYS>>
system block), a Jinja file (``*.jinja``; every variable it uses must exist), or ``checkpoint`` (the model
directory's own chat template, rendered as transformers' apply_chat_template does).

Prompt and reply are tokenised apart and joined, so a reply's tokens never depend on a search through tokenised text;
labels are IGNORE_INDEX on every prompt token, and each reply is followed by the end-of-turn id (the template's own
token, else the model's EOS), which is always labelled — whatever the pad id is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.errors import ConfigError
from llmlab.objectives.losses import IGNORE_INDEX

# Stanford Alpaca's PROMPT_DICT, verbatim (github.com/tatsu-lab/stanford_alpaca, train.py); the reply follows the colon.
ALPACA_PROMPTS = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}
CHATML_END = "<|im_end|>"
BUILT_IN = ("alpaca", "chatml", "llama2")
CHECKPOINT = "checkpoint"
UNDEFINED = re.compile(r"'([^']+)' is undefined")


def as_messages(prompt) -> list[dict]:
    """A prompt as chat messages: text is one user message, Alpaca fields one user message of instruction and input."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping):
        instruction, extra = prompt.get("instruction", ""), prompt.get("input", "")
        return [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction}]
    return [dict(message) for message in prompt]


@dataclass
class Template:
    """Renders prompts as text: name for messages, end_of_turn the token text closing an assistant turn (None: EOS)."""

    name: str
    end_of_turn: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # a Jinja template's text
    strict: bool = True  # every variable a Jinja template uses must be given (files; a checkpoint's as transformers)

    def render(self, prompt, add_generation_prompt: bool = True) -> str:
        """The prompt (text, messages or Alpaca fields) as text, ending where the reply begins when asked."""
        if self.name == "alpaca":
            return self._alpaca(prompt)
        if self.name == "chatml":
            turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}{CHATML_END}\n" for m in as_messages(prompt))
            return turns + ("<|im_start|>assistant\n" if add_generation_prompt else "")
        if self.name == "llama2":
            return self._llama2(as_messages(prompt), add_generation_prompt)
        return self._jinja(prompt, add_generation_prompt)

    def _alpaca(self, prompt) -> str:
        if isinstance(prompt, str):
            prompt = {"instruction": prompt}
        if not isinstance(prompt, Mapping) or "instruction" not in prompt:
            raise ConfigError("the alpaca template needs the field 'instruction', which chat messages do not have; "
                              "use data.template chatml, llama2 or checkpoint for them.")
        key = "prompt_input" if prompt.get("input") else "prompt_no_input"
        return ALPACA_PROMPTS[key].format(instruction=prompt["instruction"], input=prompt.get("input", ""))

    def _llama2(self, messages: list[dict], add_generation_prompt: bool) -> str:
        bos, eos = self.special_tokens.get("bos_token", ""), self.special_tokens.get("eos_token", "")
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        text = ""
        for message in messages[1:] if system is not None else messages:
            if message["role"] == "user":
                content = message["content"]
                if system is not None:  # Llama 2 puts the system prompt inside the first user turn
                    content, system = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}", None
                text += f"{bos}[INST] {content} [/INST] "
            elif message["role"] == "assistant":
                text += f"{message['content']}{eos}"
            else:
                raise ConfigError(f"the llama2 template has no place for a {message['role']!r} message.")
        return text if add_generation_prompt else text.removesuffix(" ")

    def _jinja(self, prompt, add_generation_prompt: bool) -> str:
        import jinja2

        from llmlab.infer.chat import sandboxed_environment

        variables = {**self.special_tokens, "messages": as_messages(prompt), "add_generation_prompt":
                     add_generation_prompt, "tools": None, "documents": None}
        if isinstance(prompt, Mapping):
            variables.update(prompt)
        elif isinstance(prompt, str):
            variables["prompt"] = prompt
        environment = sandboxed_environment()
        if self.strict:
            environment.undefined = jinja2.StrictUndefined
        try:
            return environment.from_string(self.source).render(**variables)
        except jinja2.exceptions.UndefinedError as error:
            missing = UNDEFINED.search(str(error))
            name = missing.group(1) if missing else str(error)
            raise ConfigError(f"the template {self.name} needs the field {name!r}, which the data does not give.") \
                from None
        except jinja2.exceptions.TemplateError as error:
            raise ConfigError(f"the template {self.name} cannot render the data ({error}).") from None

    def pieces(self, messages: Sequence[dict], end_of_turn: str) -> list[tuple[str, bool]]:
        """A conversation as (text, is an assistant reply) pieces, ready for the next reply; each reply's
        end_of_turn text (which follows its piece as a token) is left out of the pieces."""
        messages = [dict(message) for message in messages]
        pieces, done = [], ""
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._rendered_after(done, messages[:index], True)
            pieces.append((before[len(done):], False))
            pieces.append((message["content"], True))
            done = before + message["content"]
            after = self._rendered_after(done, messages[:index + 1], False)
            tail = after[len(done):]
            if tail.lstrip().startswith(end_of_turn):
                done += tail[:tail.index(end_of_turn) + len(end_of_turn)]
        final = self._rendered_after(done, messages, True)
        return pieces + [(final[len(done):], False)]

    def _rendered_after(self, done: str, messages: list[dict], add_generation_prompt: bool) -> str:
        text = self.render(messages, add_generation_prompt)
        if not text.startswith(done):
            raise ConfigError(f"the template {self.name} does not render a conversation turn by turn (an earlier "
                              "turn renders differently once later ones follow), so its replies cannot be labelled.")
        return text


def load_template(name: str, tokenizer, eos_token_id: int | None, model_directory: str | os.PathLike | None = None
                  ) -> Template:
    """The recipe's data.template: a built-in name, checkpoint (model_directory's chat template) or a Jinja file."""
    eos = tokenizer.id_to_token(eos_token_id) if eos_token_id is not None else None
    special = {"eos_token": eos, "bos_token": eos} if eos is not None else {}
    if name in BUILT_IN:
        return Template(name, CHATML_END if name == "chatml" else None, special)
    if name == CHECKPOINT:
        from llmlab.infer.chat import read_chat_template

        found = read_chat_template(model_directory) if model_directory is not None else None
        if found is None:
            raise ConfigError(f"data.template is checkpoint, but {model_directory} has no chat template "
                              "(chat_template.jinja or tokenizer_config.json's chat_template).")
        end = found.special_tokens.get("eos_token")
        return Template(CHECKPOINT, end, {**special, **found.special_tokens}, found.template, strict=False)
    path = Path(name)
    if path.suffix not in (".jinja", ".j2") and not path.is_file():
        raise ConfigError(f"data.template {name!r} is none of {', '.join(BUILT_IN)}, {CHECKPOINT} or a Jinja file.")
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"the template file {path} cannot be read ({error.strerror}).") from None
    return Template(str(path), None, special, source)


class Encoder:
    """Token ids and labels of prompts and replies under a template, for one tokenizer and model."""

    def __init__(self, tokenizer, template: Template, eos_token_id: int, bos_token_id: int | None = None):
        if eos_token_id is None:
            raise ConfigError("the model has no eos_token_id, which ends every reply it is taught.")
        self.tokenizer, self.template, self.eos_token_id, self.bos_token_id = tokenizer, template, eos_token_id, \
            bos_token_id
        self.end_of_turn_id = eos_token_id
        if template.end_of_turn is not None:
            found = tokenizer.token_to_id(template.end_of_turn)
            if found is None:
                raise ConfigError(f"the {template.name} template ends each turn with {template.end_of_turn}, which "
                                  "is not a token of the model's tokenizer.")
            self.end_of_turn_id = found
        self.end_of_turn = tokenizer.id_to_token(self.end_of_turn_id)

    def ids(self, text: str) -> list[int]:
        """text's token ids, special tokens as written and none added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def _start(self, ids: list[int]) -> list[int]:
        """ids with the model's BOS in front, unless it has none or the template wrote it."""
        if self.bos_token_id is None or ids[:1] == [self.bos_token_id]:
            return ids
        return [self.bos_token_id, *ids]

    def encode_prompt(self, prompt) -> list[int]:
        """The ids the model continues with its reply; earlier replies of a conversation end with the end of turn."""
        if isinstance(prompt, (str, Mapping)) or not any(m["role"] == "assistant" for m in prompt):
            return self._start(self.ids(self.template.render(prompt)))
        ids = []
        for text, is_reply in self.template.pieces(prompt, self.end_of_turn):
            ids += self.ids(text) + ([self.end_of_turn_id] if is_reply else [])
        return self._start(ids)

    def encode(self, prompt, response: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels): the prompt unlabelled, then the response and the end-of-turn id, labelled."""
        prompt_ids = self.encode_prompt(prompt)
        reply = self.ids(response) + [self.end_of_turn_id]
        return prompt_ids + reply, [IGNORE_INDEX] * len(prompt_ids) + reply

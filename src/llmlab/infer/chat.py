"""Chat (survey §6): a conversation of {role, content} messages rendered into one prompt — by the checkpoint's Jinja
chat template, as transformers' apply_chat_template renders it, or else in a plain "User: …\\nAssistant:" format —
and a session that streams each reply and keeps the conversation within the model's context.

    template = read_chat_template(directory)        # None when the checkpoint has none
    session = ChatSession(model, template, max_new_tokens=256)
    for text in session.reply("Hello!"):
        print(text, end="", flush=True)
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from llmlab.errors import CheckpointError, ConfigError
from llmlab.files import read_json_object
from llmlab.infer.config import GenerationConfig
from llmlab.infer.generate import resolve_config, stream

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers writes the template here; it wins over tokenizer_config's
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_STOP = ("\nUser:",)  # so that the model does not write the user's next turn itself
MINIMUM_JINJA = (3, 1, 6)  # transformers' floor: older jinja2 sandboxes have known escapes, and templates are untrusted

Message = dict[str, str]


@dataclass(frozen=True)
class ChatTemplate:
    """A checkpoint's Jinja chat template and the special tokens (bos_token, eos_token, …) it may refer to."""

    template: str
    special_tokens: dict[str, str]

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The conversation as text, ready for the assistant's reply when add_generation_prompt."""
        return format_chat(messages, self.template, self.special_tokens, add_generation_prompt)


def sandboxed_environment():
    """A sandboxed Jinja environment configured as transformers' chat templates expect."""
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ConfigError("Chat templates need jinja2; install it with `pip install jinja2`.") from None
    if tuple(int(part) for part in jinja2.__version__.split(".")[:3] if part.isdigit()) < MINIMUM_JINJA:
        raise ConfigError(f"Chat templates need jinja2 3.1.6 or newer, not {jinja2.__version__}; "
                          f"upgrade it with `pip install -U jinja2`.")

    class GenerationTag(jinja2.ext.Extension):
        """{% generation %}…{% endgeneration %} (transformers' assistant-mask marker) renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[GenerationTag, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return environment


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
    import jinja2

    try:
        return sandboxed_environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise ConfigError(f"The chat template does not parse: {error.message} (line {error.lineno}).") from None


def format_chat(messages: Sequence[Message], template: str, special_tokens: dict[str, str] | None = None,
                add_generation_prompt: bool = True) -> str:
    """Render messages ({role, content} dicts) with a Jinja chat template as transformers' apply_chat_template does
    (tokenize=False): special_tokens (bos_token, eos_token, …) are visible to the template."""
    import jinja2

    variables = {**(special_tokens or {}), "messages": [dict(message) for message in messages], "tools": None,
                 "documents": None, "add_generation_prompt": add_generation_prompt}
    try:
        return _compiled(template).render(**variables)
    except jinja2.exceptions.TemplateError as error:
        raise ConfigError(f"The chat template refused the conversation: {error}") from None


def plain_prompt(messages: Sequence[Message]) -> str:
    """The conversation in the plain format, "User: …\\nAssistant: …\\n…\\nAssistant:", for models without a template."""
    lines = [f"{PLAIN_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    return "\n".join(lines + ["Assistant:"])


def read_chat_template(directory: str | os.PathLike) -> ChatTemplate | None:
    """The chat template of a checkpoint directory (chat_template.jinja, else tokenizer_config.json's chat_template,
    its "default" one when named) with the special tokens of tokenizer_config.json; None when it has none."""
    directory = Path(directory)
    config = read_json_object(directory / TOKENIZER_CONFIG_FILE) if (directory / TOKENIZER_CONFIG_FILE).exists() else {}
    template = config.get("chat_template")
    if (directory / CHAT_TEMPLATE_FILE).exists():
        template = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if isinstance(template, list):  # older transformers: [{"name": …, "template": …}, …]
        template = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
    if isinstance(template, dict):
        template = template.get("default")
    if template is None:
        return None
    if not isinstance(template, str):
        raise CheckpointError(f"the chat_template in {directory / TOKENIZER_CONFIG_FILE} is not a string.")
    fallback = (read_json_object(directory / SPECIAL_TOKENS_MAP_FILE) if (directory / SPECIAL_TOKENS_MAP_FILE).exists()
                else {})
    special = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name, fallback.get(name))
        value = value.get("content") if isinstance(value, dict) else value  # an AddedToken written out
        if isinstance(value, str):
            special[name] = value
    return ChatTemplate(template, special)


def require_tokenizer(model, where: str | os.PathLike):
    """The model's tokenizer; a model loaded without tokenizer.json is refused in one sentence."""
    if getattr(model, "tokenizer", None) is None:
        raise ConfigError(f"{where} has no tokenizer.json, which is needed to turn text into tokens and back.")
    return model.tokenizer


def chat_prompt_ids(tokenizer, messages: Sequence[Message], template: ChatTemplate | None) -> list[int]:
    """The token ids of a conversation ready for the assistant's reply: the template's rendering with its special
    tokens as written and none added (as apply_chat_template(tokenize=True)), else the plain format."""
    if template is not None:
        return tokenizer.encode(template.render(messages), add_special_tokens=False).ids
    return tokenizer.encode(plain_prompt(messages)).ids


class ChatSession:
    """A conversation with a model: each reply streamed and kept (also a reply cut short), the oldest turns dropped
    when the prompt plus room for a reply (max_new_tokens, at most half the context) no longer fits the context."""

    def __init__(self, model, template: ChatTemplate | None = None, config: GenerationConfig | None = None, *,
                 tokenizer=None, **changes):
        self.model, self.template = model, template
        self.tokenizer = tokenizer if tokenizer is not None else require_tokenizer(model, "the model")
        config = resolve_config(model, config, changes)
        if config.n != 1 or config.num_beams != 1:
            raise ConfigError("A chat reply is one sequence: use n=1 and num_beams=1.")
        self.config = config if template is not None else config.replace(stop=config.stop + PLAIN_STOP)
        self.messages: list[Message] = []
        self.dropped_turns = 0
        self.replies = 0

    def reset(self) -> None:
        """Forget the conversation."""
        self.messages = []

    def prompt_ids(self, messages: Sequence[Message] | None = None) -> list[int]:
        """The token ids the model is given for the conversation (default: the one so far)."""
        return chat_prompt_ids(self.tokenizer, self.messages if messages is None else messages, self.template)

    def _fitting_prompt(self) -> list[int]:
        """The prompt of the conversation, after dropping its oldest turns until it fits beside room for a reply;
        a last message too long for the context alone is refused, and then nothing is dropped."""
        context = self.model.config.max_seq_len
        budget = context - min(self.config.max_new_tokens, context // 2)
        messages, dropped = list(self.messages), 0
        first = 1 if messages and messages[0]["role"] == "system" else 0
        ids = self.prompt_ids(messages)
        while len(ids) > budget and len(messages) - first > 1:
            end = next((i for i in range(first + 1, len(messages)) if messages[i]["role"] == "user"),
                       len(messages) - 1)
            del messages[first:end]
            dropped += 1
            ids = self.prompt_ids(messages)
        if len(ids) >= context:
            raise ConfigError(f"The message makes a prompt of {len(ids)} tokens, but the model's context holds "
                              f"{context}; write a shorter one.")
        self.messages, self.dropped_turns = messages, self.dropped_turns + dropped
        return ids

    def reply(self, text: str) -> Iterator[str]:
        """Add the user's message and yield the model's reply piece by piece; the reply joins the conversation when
        it ends, also when it is cut short (an exception, or close() of this iterator)."""
        self.messages.append({"role": "user", "content": text})
        try:
            ids = self._fitting_prompt()
        except ConfigError:
            self.messages.pop()
            raise
        seed = None if self.config.seed is None else self.config.seed + self.replies  # each reply its own draws
        self.replies += 1
        pieces: list[str] = []
        try:
            for piece in stream(self.model, ids, self.config.replace(seed=seed), tokenizer=self.tokenizer):
                pieces.append(piece.text)
                yield piece.text
        finally:
            self.messages.append({"role": "assistant", "content": "".join(pieces).strip()})

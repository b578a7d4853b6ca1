"""In-context learning prompts (survey §6.1): an instruction, k demonstrations each rendered by a Jinja template (as
lm-evaluation-harness's doc_to_text / doc_to_target), and the query.

    template = PromptTemplate(text="Q: {{question}}\\nA:", target="{{answer}}")
    prompt = build_prompt("Answer the question.", demonstrations, {"question": "2 + 2?"}, template)

A demonstration renders as text + target_delimiter + target, demonstrations are joined by fewshot_delimiter, and the
query renders as its text alone: lm-eval's plain-text layout, so that its tasks' prompts come out character for
character.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmlab.errors import ConfigError

_UNDEFINED_NAME = re.compile(r"^'(.+)' is undefined$|has no attribute '(.+)'$")


@dataclass(frozen=True)
class PromptTemplate:
    """How a record becomes prompt text: `text` renders its input, `target` its answer (both Jinja over the record's
    fields), with lm-eval's default delimiters."""

    text: str
    target: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"

    def render_text(self, record: Mapping[str, Any]) -> str:
        """The record's input: the query part of a prompt."""
        return render(self.text, record)

    def render_demonstration(self, record: Mapping[str, Any]) -> str:
        """The record as a solved example: its text, the target delimiter, its target."""
        return self.render_text(record) + self.target_delimiter + render(self.target, record)


@functools.lru_cache(maxsize=1)
def _environment():
    """chat.py's sandboxed environment, configured as lm-eval renders its task templates (StrictUndefined, the final
    newline kept, no block trimming)."""
    import jinja2

    from llmlab.infer.chat import _jinja_environment

    return _jinja_environment().overlay(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                        trim_blocks=False, lstrip_blocks=False)


@functools.lru_cache(maxsize=64)
def _compiled(template: str):
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise ConfigError(f"The prompt template {template!r} does not parse: {error.message} "
                          f"(line {error.lineno}).") from None


def render(template: str, record: Mapping[str, Any]) -> str:
    """A Jinja template rendered over a record's fields; a field the record lacks is a ConfigError naming it."""
    import jinja2

    if not isinstance(record, Mapping):
        raise ConfigError(f"The prompt template {template!r} needs a record of named fields, not "
                          f"{type(record).__name__}.")
    try:
        return _compiled(template).render(**record)
    except jinja2.exceptions.UndefinedError as error:
        match = _UNDEFINED_NAME.search(str(error))
        field = next((group for group in match.groups() if group), None) if match else None
        what = repr(field) if field else f"something undefined ({error})"
        raise ConfigError(f"The prompt template {template!r} refers to {what}, which the record (fields: "
                          f"{', '.join(map(str, record)) or 'none'}) lacks.") from None
    except jinja2.exceptions.TemplateError as error:
        raise ConfigError(f"The prompt template {template!r} failed on a record: {error}") from None


def build_prompt(instruction: str | None, demonstrations: Sequence[Mapping[str, Any]], query: Mapping[str, Any],
                 template: PromptTemplate, *, instruction_delimiter: str | None = None) -> str:
    """The ICL prompt: the instruction, then each demonstration (text, target delimiter, target) followed by the
    fewshot delimiter, then the query's text; the instruction is followed by instruction_delimiter (default: the
    template's fewshot delimiter)."""
    delimiter = template.fewshot_delimiter
    parts = [template.render_demonstration(record) + delimiter for record in demonstrations]
    if instruction:
        parts.insert(0, instruction + (delimiter if instruction_delimiter is None else instruction_delimiter))
    return "".join(parts) + template.render_text(query)

"""GenerationConfig (survey §6): how many tokens to generate, how to choose each one and when to stop.

The names follow Hugging Face's GenerationConfig where it has the option, and OpenAI/vLLM's sampling
parameters (presence/frequency penalties, stop strings, n, logprobs, seed, ignore_eos) where it does not.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError
from llmlab.files import read_json_object

HF_KEYS = (
    "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
    "no_repeat_ngram_size", "num_beams", "length_penalty", "early_stopping", "eos_token_id",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options for generate() and stream(); validated on construction.

    Greedy decoding (do_sample=False) ignores temperature, top_k, top_p and min_p. As in transformers,
    do_sample=True needs temperature > 0 (an OpenAI temperature of 0 maps to do_sample=False).
    """

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    eos_token_id: int | tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False
    seed: int | None = None
    n: int = 1
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_id, (list, tuple)):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        self.validate()

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids as a tuple (empty when there is none)."""
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    def validate(self) -> None:
        """Raise ConfigError naming the first field outside its allowed range."""
        for name in ("do_sample", "include_stop_str_in_output", "ignore_eos"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"GenerationConfig.{name} must be True or False, not {getattr(self, name)!r}.")
        at_least = {"max_new_tokens": 1, "min_new_tokens": 0, "top_k": 0, "no_repeat_ngram_size": 0, "n": 1,
                    "num_beams": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ConfigError(f"GenerationConfig.{name} must be an integer of at least {low}, not {value!r}.")
        self._check_range("temperature", 0.0, None, low_open=False)
        self._check_range("top_p", 0.0, 1.0, low_open=True)
        self._check_range("min_p", 0.0, 1.0, low_open=False)
        self._check_range("repetition_penalty", 0.0, None, low_open=True)
        self._check_range("presence_penalty", -2.0, 2.0, low_open=False)
        self._check_range("frequency_penalty", -2.0, 2.0, low_open=False)
        self._check_range("length_penalty", None, None, low_open=False)
        if self.do_sample and self.temperature == 0:
            raise ConfigError("GenerationConfig.temperature must be above 0 with do_sample=True; "
                              "use do_sample=False for greedy decoding.")
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(f"GenerationConfig.min_new_tokens ({self.min_new_tokens}) must not exceed "
                              f"max_new_tokens ({self.max_new_tokens}).")
        if not all(_is_int(token) and token >= 0 for token in self.eos_token_ids):
            raise ConfigError(f"GenerationConfig.eos_token_id must be a token id or a list of token ids of 0 or more, "
                              f"not {self.eos_token_id!r}.")
        if not isinstance(self.stop, tuple) or not all(isinstance(text, str) and text for text in self.stop):
            raise ConfigError(f"GenerationConfig.stop must be a list of non-empty strings, not {self.stop!r}.")
        if self.seed is not None and not _is_int(self.seed):
            raise ConfigError(f"GenerationConfig.seed must be an integer or None, not {self.seed!r}.")
        if self.early_stopping not in (True, False, "never") or not isinstance(self.early_stopping, (bool, str)):
            raise ConfigError(f"GenerationConfig.early_stopping must be True, False or 'never', "
                              f"not {self.early_stopping!r}.")
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            raise ConfigError(f"GenerationConfig.logprobs must be None or an integer of at least 0, "
                              f"not {self.logprobs!r}.")
        if self.num_beams > 1 and self.do_sample:
            raise ConfigError("GenerationConfig.num_beams > 1 with do_sample=True (beam sampling) is not supported.")
        if self.num_beams > 1 and self.n > self.num_beams:
            raise ConfigError(f"GenerationConfig.n ({self.n}) must not exceed num_beams ({self.num_beams}) "
                              f"with beam search.")
        if self.num_beams == 1 and self.n > 1 and not self.do_sample:
            raise ConfigError(f"GenerationConfig.n ({self.n}) above 1 needs do_sample=True or num_beams >= n, "
                              f"since greedy decoding gives n identical sequences.")

    def _check_range(self, name: str, low: float | None, high: float | None, low_open: bool) -> None:
        value = getattr(self, name)
        below = low is not None and (value <= low if low_open else value < low)
        if not _is_number(value) or below or (high is not None and value > high):
            opening = "(-inf" if low is None else f"({low:g}" if low_open else f"[{low:g}"
            bounds = f"{opening}, {'inf)' if high is None else f'{high:g}]'}"
            raise ConfigError(f"GenerationConfig.{name} must be a number in {bounds}, not {value!r}.")

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - {field.name for field in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"GenerationConfig has no field {unknown[0]!r}.")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, source: str | os.PathLike | dict) -> GenerationConfig:
        """Read a Hugging Face generation_config.json (a dict, the file or its directory); unknown keys are ignored."""
        if isinstance(source, dict):
            values = source
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "generation_config.json"
            values = read_json_object(path, ConfigError)
        return cls(**{key: values[key] for key in HF_KEYS if values.get(key) is not None})

    def to_hf(self) -> dict:
        """The generation_config.json keys of the options that differ from the defaults (what from_hf reads back)."""
        defaults = GenerationConfig()
        values = {key: getattr(self, key) for key in HF_KEYS if getattr(self, key) != getattr(defaults, key)}
        if isinstance(values.get("eos_token_id"), tuple):
            values["eos_token_id"] = list(values["eos_token_id"])
        return values

"""Incremental detokenization (survey §6): the new text of each generated token, for streaming.

Decoding tokens one at a time breaks characters whose UTF-8 bytes span several byte-level or byte-fallback tokens,
and loses the spaces some decoders add or strip by context. As TGI and vLLM do, each step decodes a short window of
earlier tokens with and without the new ones and emits the difference, holding text back while it ends in U+FFFD
(an unfinished character).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from tokenizers import Tokenizer

CONTEXT_TOKENS = 5  # the prompt tokens decoded with the first generated ones, as TGI and vLLM do
REPLACEMENT = "\ufffd"


def _byte_fallback_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """The ids of the <0xXX> byte tokens when the decoder has ByteFallback, else none."""
    if tokenizer.decoder is None or "ByteFallback" not in json.dumps(json.loads(tokenizer.decoder.__getstate__())):
        return frozenset()
    ids = (tokenizer.token_to_id(f"<0x{byte:02X}>") for byte in range(256))
    return frozenset(id for id in ids if id is not None)


class IncrementalDecoder:
    """Turns generated token ids into text piece by piece; the pieces join to tokenizer.decode of all the ids."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._byte_ids = _byte_fallback_ids(tokenizer)
        added = tokenizer.get_added_tokens_decoder().items()
        self._skipped = frozenset(id for id, token in added if token.special) if skip_special_tokens else frozenset()
        self._ids = list(context)
        self._read = len(self._ids)  # tokens up to here have been emitted
        self._prefix = max(0, self._read - CONTEXT_TOKENS)  # the window decoded for context starts here

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self._ids[start:end], skip_special_tokens=self.skip_special_tokens)

    def push(self, token_ids: Sequence[int]) -> str:
        """The text the new token ids complete (possibly empty while a character is unfinished)."""
        self._ids.extend(token_ids)
        # ByteFallback decodes a whole run of byte tokens at once (one U+FFFD per byte if any is invalid), skipped
        # special tokens included, so a run is emitted only when a token of text ends it
        last = next((id for id in reversed(self._ids) if id not in self._skipped), None)
        if not token_ids or last in self._byte_ids:
            return ""
        before = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix)
        if text.endswith(REPLACEMENT) or not text.startswith(before):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(before):]

    def flush(self) -> str:
        """The text still held back, unfinished characters included, at the end of generation."""
        before = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix)
        self._prefix = self._read = len(self._ids)
        return text[len(os.path.commonprefix([before, text])):]

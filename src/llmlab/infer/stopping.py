"""Stop strings (survey §6): end generation when the decoded text contains one, across token boundaries.

Streamed text never shows the start of a stop string that is cut afterwards: a tail that could still begin one is held
back until it either completes a stop string or can no longer do so. The first stop string to be completed wins (the
longest one when several complete at the same character), so streaming and whole-text truncation agree.
"""

from __future__ import annotations

from typing import Sequence


class StopStrings:
    """Incremental stop-string matching: push() each step's new text, emit what it returns."""

    def __init__(self, stops: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        self.stops = tuple(stops)
        self.include = include_stop_str_in_output
        self.matched: str | None = None
        self._pending = ""

    @property
    def stopped(self) -> bool:
        """Whether a stop string has appeared."""
        return self.matched is not None

    def push(self, text: str) -> str:
        """The text that may be shown now, given this step's new text; empty once a stop string has appeared."""
        if self.stopped:
            return ""
        pending = self._pending + text
        found = [(pending.find(stop) + len(stop), -len(stop), stop) for stop in self.stops if stop in pending]
        if found:
            end, _, self.matched = min(found)
            self._pending = ""
            return pending[:end if self.include else end - len(self.matched)]
        hold = max((self._open_prefix(pending, stop) for stop in self.stops), default=0)
        self._pending = pending[len(pending) - hold:]
        return pending[:len(pending) - hold]

    def flush(self) -> str:
        """The held-back tail, when generation ends without a stop string."""
        tail, self._pending = self._pending, ""
        return "" if self.stopped else tail

    @staticmethod
    def _open_prefix(text: str, stop: str) -> int:
        """The length of the longest end of text that is a proper beginning of stop."""
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:length]):
                return length
        return 0


def truncate_at_stop(text: str, stops: Sequence[str], include_stop_str_in_output: bool = False
                     ) -> tuple[str, str | None]:
    """Whole text cut at its first stop string (kept when include_stop_str_in_output), and that string or None."""
    matcher = StopStrings(stops, include_stop_str_in_output)
    kept = matcher.push(text)
    return kept + matcher.flush(), matcher.matched

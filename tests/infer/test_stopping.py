"""Stop strings: found across token boundaries, never partly streamed and then cut, the first one completed wins,
included or excluded; streaming in any chunks gives the whole-text truncation, which a brute-force reference checks."""

from hypothesis import given
from hypothesis import strategies as st

from llmlab.infer.stopping import StopStrings, truncate_at_stop


def stream(pieces, stops, include=False):
    matcher = StopStrings(stops, include)
    emitted = [matcher.push(piece) for piece in pieces]
    return emitted, matcher


def test_a_stop_string_split_over_three_pieces():
    emitted, matcher = stream(["Hello</", "st", "op> ignored", " more"], ["</stop>"])
    assert emitted == ["Hello", "", "", ""]
    assert matcher.stopped and matcher.matched == "</stop>"


def test_the_stop_string_is_emitted_when_included():
    emitted, _ = stream(["Hello</", "st", "op> ignored"], ["</stop>"], include=True)
    assert "".join(emitted) == "Hello</stop>"


def test_a_held_back_tail_is_released_once_it_cannot_start_a_stop_string():
    emitted, matcher = stream(["a <", "/s", "x b"], ["</stop>"])
    assert emitted == ["a ", "", "</sx b"] and not matcher.stopped
    assert matcher.flush() == ""


def test_held_back_text_is_flushed_at_the_end():
    emitted, matcher = stream(["end </st"], ["</stop>"])
    assert emitted == ["end "] and matcher.flush() == "</st"


def test_when_one_stop_string_is_a_prefix_of_another_the_shorter_completes_first():
    emitted, matcher = stream(["x", "EN", "D", "ING"], ["ENDING", "END"])
    assert "".join(emitted) == "x" and matcher.matched == "END"
    assert truncate_at_stop("xENDING", ["ENDING", "END"], True) == ("xEND", "END")


def test_when_two_stop_strings_complete_at_once_the_longer_wins():
    assert truncate_at_stop("a\n\n", ["\n", "a\n"], True) == ("a\n", "a\n")
    assert truncate_at_stop("a\n\n", ["\n", "a\n"]) == ("", "a\n")


def test_no_stop_strings_passes_text_through():
    emitted, matcher = stream(["a", "b"], [])
    assert emitted == ["a", "b"] and matcher.flush() == "" and not matcher.stopped


def reference_truncation(text, stops, include):
    """Scan the text one character at a time; cut at the first stop string completed, the longest on a tie."""
    for end in range(1, len(text) + 1):
        for stop in sorted(stops, key=len, reverse=True):
            if text[:end].endswith(stop):
                return text[:end if include else end - len(stop)], stop
    return text, None


ALPHABET = st.sampled_from("ab\n<>/😀")


@given(text=st.text(ALPHABET, max_size=30), stops=st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=4),
       include=st.booleans(), data=st.data())
def test_streaming_in_any_chunks_never_shows_text_that_is_cut(text, stops, include, data):
    expected = reference_truncation(text, stops, include)
    assert truncate_at_stop(text, stops, include) == expected
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)])]
    matcher = StopStrings(stops, include)
    shown = ""
    for piece in pieces:
        shown += matcher.push(piece)
        assert expected[0].startswith(shown)
    assert (shown + matcher.flush(), matcher.matched) == expected

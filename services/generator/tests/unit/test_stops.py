"""StopMatcher: stop strings cut streamed text, even when a stop string spans several tokens."""

from __future__ import annotations

import pytest

from ragline_generator.engines.base import StopMatcher

pytestmark = pytest.mark.unit


def run(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        text, hit = m.feed(p)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + m.flush(), False


def test_no_stops_passes_text_through() -> None:
    m = StopMatcher([])
    assert m.feed("abc") == ("abc", False)


def test_stop_inside_one_piece() -> None:
    assert run(["Hello. World"], ["."]) == ("Hello", True)


def test_stop_split_across_pieces_is_held_back_then_cut() -> None:
    m = StopMatcher(["END"])
    assert m.feed("abc E") == ("abc ", False)  # "E" may start "END": held back
    assert m.feed("N") == ("", False)
    assert m.feed("D more") == ("", True)


def test_false_start_is_released() -> None:
    m = StopMatcher(["END"])
    assert m.feed("xE") == ("x", False)
    assert m.feed("Nx") == ("ENx", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["one two three"], ["three", "two"]) == ("one ", True)


def test_flush_returns_held_tail_at_end() -> None:
    assert run(["abc", "E"], ["END"]) == ("abcE", False)

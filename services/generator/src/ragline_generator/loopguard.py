"""Stops a streamed answer when it starts repeating itself: a word n-gram seen `repeats` times is a loop."""

from __future__ import annotations

import re
from collections import Counter

# Words are runs of letters and digits, case folded: punctuation, paths and URLs split into words, so
# "dpkg-v2." matches "dpkg-v2" and a loop with no spaces ("a/b/a/b/...") is still a loop.
_WORD = re.compile(r"\w+")
# A word longer than this (a language written without spaces) is counted and released rather than held:
# the guard must never stall a stream.
MAX_HELD_CHARS = 64


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class LoopGuard:
    """Fed the streamed text piece by piece; holds back the last, possibly unfinished, word.

    `feed` returns the text that is safe to emit and whether a loop was found. On a loop, the emitted text
    ends before the word that completed the n-gram's `repeats`-th occurrence, so the reader sees at most
    `repeats - 1` copies of any n-gram. `ngram = 0` turns the guard off (text passes through unchanged).
    """

    def __init__(self, ngram: int = 4, repeats: int = 3) -> None:
        if ngram < 0 or (ngram > 0 and repeats < 2):
            raise ValueError(f"loop guard needs ngram >= 0 and repeats >= 2, got ngram={ngram} repeats={repeats}")
        self.ngram = ngram
        self.repeats = repeats
        self.looped = False
        self._held = ""
        self._recent: list[str] = []
        self._counts: Counter[tuple[str, ...]] = Counter()

    def _add(self, word: str) -> bool:
        """Count the n-gram this word completes; True when it reaches `repeats`."""
        self._recent.append(word)
        if len(self._recent) > self.ngram:
            del self._recent[0]
        if len(self._recent) < self.ngram:
            return False
        gram = tuple(self._recent)
        self._counts[gram] += 1
        return self._counts[gram] >= self.repeats

    def _scan(self, text: str) -> tuple[str, bool]:
        """Count every word of `text` (all complete); cut before the word that closes a loop."""
        for match in _WORD.finditer(text):
            if self._add(match.group().lower()):
                self.looped = True
                return text[: match.start()].rstrip(), True
        return text, False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.ngram == 0:
            return text, False
        if self.looped:
            return "", True
        buf = self._held + text
        # A word at the very end may still grow with the next piece: hold it back.
        tail = re.search(r"\w*$", buf)
        cut = tail.start() if tail else len(buf)
        if len(buf) - cut > MAX_HELD_CHARS:
            cut = len(buf)
        self._held = buf[cut:]
        return self._scan(buf[:cut])

    def flush(self) -> str:
        """The held tail at the end of the stream (dropped if it closes a loop)."""
        if self.ngram == 0 or self.looped:
            return ""
        tail, self._held = self._held, ""
        out, _ = self._scan(tail)
        return out


def has_loop(text: str, ngram: int = 4, repeats: int = 3) -> bool:
    """Whether any word n-gram of a finished text occurs `repeats` times or more."""
    words = _words(text)
    counts = Counter(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))
    return any(c >= repeats for c in counts.values())

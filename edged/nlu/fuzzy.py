"""Small, dependency-free fuzzy word matching: optimal-string-alignment edit distance.

The vocabularies matched against are small (a few hundred words: the lexicons and the words of
the metric names the daemon has), so a cached pure-Python distance is fast enough (a question
is matched in well under a millisecond once its words are cached) and needs no extra package.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=65536)
def osa_distance(a: str, b: str) -> int:
    """Levenshtein distance plus adjacent transpositions ("humidty" → "humidity" is 1)."""
    if a == b:
        return 0
    la, lb = len(a), len(b)
    if not la or not lb:
        return la or lb
    prev2: list[int] = []
    prev = list(range(lb + 1))
    for i in range(1, la + 1):
        cur = [i] + [0] * lb
        ai = a[i - 1]
        for j in range(1, lb + 1):
            cost = 0 if ai == b[j - 1] else 1
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ai == b[j - 2] and a[i - 2] == b[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
        prev2, prev = prev, cur
    return prev[lb]


def allowed_edits(word: str) -> int:
    """How many edits a word of this length may carry and still count as a misspelling."""
    n = len(word)
    if n <= 3:
        return 0
    if n <= 5:
        return 1
    if n <= 9:
        return 2
    return 3


@lru_cache(maxsize=16384)
def best_match(word: str, vocab: tuple[str, ...]) -> tuple[str | None, int]:
    """The closest vocabulary word within the allowed edits (ties: the longer common prefix)."""
    if word in vocab:
        return word, 0
    limit = allowed_edits(word)
    if limit == 0:
        return None, 99
    best: tuple[int, int, str] | None = None
    for v in vocab:
        if abs(len(v) - len(word)) > limit or len(v) <= 3:
            continue
        d = osa_distance(word, v)
        if d > min(limit, allowed_edits(v)):
            continue
        prefix = 0
        for x, y in zip(word, v):
            if x != y:
                break
            prefix += 1
        key = (d, -prefix, v)
        if best is None or key < best:
            best = key
    if best is None:
        return None, 99
    return best[2], best[0]

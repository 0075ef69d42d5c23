"""Small pieces shared by the client tests."""

from __future__ import annotations

from ecephys_dl.retry import RetryPolicy

# Retries that finish in milliseconds.
FAST = RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05, jitter=0.5)


class Sleeps(list[float]):
    """An injected sleep: records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def holes(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The ranges of 0..size that ``ranges`` (sorted, merged) do not cover."""
    found, at = [], 0
    for first, end in ranges:
        if first > at:
            found.append((at, first))
        at = end
    if at < size:
        found.append((at, size))
    return found


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges sorted, with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for first, end in sorted(ranges):
        if out and first <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((first, end))
    return out

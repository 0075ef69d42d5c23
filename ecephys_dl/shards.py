"""Shares of a run's files, for several runs (a job array, several hosts) filling one cache together.

``--shard K/N`` takes the files whose path hashes to K of N: a stable hash, the same on every
host and in every run, so N runs given 1/N … N/N take every file exactly once.
"""

from __future__ import annotations

import re
import zlib
from typing import NamedTuple

from ecephys_dl.errors import UsageError

__all__ = ["Shard", "in_shard", "parse_shard"]


class Shard(NamedTuple):
    """Share ``k`` of ``n`` (1 <= k <= n) of a run's files; it compares and unpacks as ``(k, n)``."""

    k: int
    n: int

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


def parse_shard(text: str) -> Shard:
    """``K/N`` (1 <= K <= N): this run's share of the files, for N runs filling one cache together."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text) if isinstance(text, str) else None
    if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise UsageError(f"not a shard: {text!r}", hint="write K/N with 1 <= K <= N, e.g. --shard 2/4")
    return Shard(int(match.group(1)), int(match.group(2)))


def in_shard(relative: str, shard: tuple[int, int]) -> bool:
    """Whether a file belongs to shard K of N: a stable hash of its path, the same on every host."""
    k, n = shard
    return zlib.crc32(relative.encode()) % n == k - 1

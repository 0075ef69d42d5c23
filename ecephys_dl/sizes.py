"""Byte sizes and durations as people write them: ``20M``, ``1.5GiB``, ``512k``; ``90s``, ``6h``."""

from __future__ import annotations

import math
import re

from ecephys_dl.errors import UsageError

__all__ = ["format_size", "parse_duration", "parse_size"]

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str) -> int:
    """Parse a byte count; suffixes k, M, G, T are powers of 1024 (``20M`` = 20 MiB).

    >>> parse_size("20M"), parse_size("1.5k"), parse_size("4096")
    (20971520, 1536, 4096)
    """
    match = _SIZE.match(text) if isinstance(text, str) else None
    if match is None:
        raise UsageError(
            f"not a size: {text!r}", hint="write a number of bytes with an optional k, M, G or T suffix, e.g. 20M"
        )
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value > 2**63 - 1:
        raise UsageError(f"size out of range: {text!r}")
    return int(value)


def parse_duration(text: str) -> float:
    """Parse a duration in seconds; suffixes ms, s, m, h, d (no suffix means seconds)."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise UsageError(f"not a duration: {text!r}", hint="write e.g. 30s, 15m, 6h or 2d")
    value = float(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]
    if not math.isfinite(value):
        raise UsageError(f"duration out of range: {text!r}")
    return value


def format_size(n: float) -> str:
    """Format a byte count for people: ``2.7 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")

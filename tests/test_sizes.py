"""Sizes and durations as people write them."""

from __future__ import annotations

import pytest

from ecephys_dl.errors import UsageError
from ecephys_dl.sizes import format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("4096", 4096), ("20M", 20 * 2**20), ("20m", 20 * 2**20), ("1.5k", 1536), ("64KiB", 65536),
     ("2G", 2 * 2**30), ("1T", 2**40), (" 8 MB ", 8 * 2**20), (".5k", 512)],
)  # fmt: skip
def test_parse_size(text: str, expected: int) -> None:
    """Suffixes are powers of 1024 and case does not matter."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "-1", "1X", "1e3", "nan", "1..2", "9" * 400])
def test_parse_size_rejects_garbage_with_a_usage_error(text: str) -> None:
    """Anything that is not a size is a usage error that names the value."""
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [("30", 30.0), ("30s", 30.0), ("15m", 900.0), ("6h", 21600.0), ("2d", 172800.0), ("250ms", 0.25)])
def test_parse_duration(text: str, expected: float) -> None:
    """Durations are seconds unless a unit says otherwise."""
    assert parse_duration(text) == pytest.approx(expected)


def test_parse_duration_rejects_garbage() -> None:
    """A duration without a number is a usage error."""
    with pytest.raises(UsageError):
        parse_duration("soon")


def test_format_size() -> None:
    """Sizes print in binary units with one decimal."""
    assert format_size(512) == "512 B"
    assert format_size(2723.9 * 2**20) == "2.7 GiB"

"""The per-part MD5s that S3 ETags and DANDI etags are made of."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["part_md5s"]


def part_md5s(path: str | Path, part_size: int) -> list[bytes]:
    """The binary MD5 of each ``part_size`` part of the file, in order (one part for an empty file)."""
    digests: list[bytes] = []
    with open(path, "rb") as stream:
        while True:
            part = stream.read(part_size)
            if not part and digests:
                break
            digests.append(hashlib.md5(part).digest())
            if len(part) < part_size:
                break
    return digests

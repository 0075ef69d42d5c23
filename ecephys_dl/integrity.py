"""Checks that a data file is whole and is the file it should be.

:func:`hdf5_end_of_file` reads the HDF5 superblock's end-of-file address: a file shorter than
that address was cut short, which is the common corruption ("truncated file: eof = X,
stored_eof = Y"). It reads a few hundred bytes, whatever the file's size. :func:`check_nwb` then
opens the file with h5py, as AllenSDK would, and checks that ``int(identifier)`` is the session
or probe id the file should belong to.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HDF5_SIGNATURE",
    "Problem",
    "Verdict",
    "check_nwb",
    "check_size_and_superblock",
    "hdf5_end_of_file",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The superblock may follow a user block of 512, 1024, 2048, ... bytes.
_SUPERBLOCK_OFFSETS = (0, *(512 << i for i in range(12)))


class Problem(enum.StrEnum):
    """What is wrong with a file; the names are the statuses ``verify`` reports."""

    MISSING = "missing"
    TRUNCATED = "truncated"
    SIZE_MISMATCH = "size-mismatch"
    NOT_HDF5 = "not-hdf5"
    UNREADABLE = "unreadable"
    WRONG_ID = "wrong-id"
    HASH_MISMATCH = "hash-mismatch"
    DIFFERS_FROM_PUBLISHED = "differs-from-published"


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: ``problem`` is None when the file is sound."""

    problem: Problem | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


OK = Verdict(None)


def hdf5_end_of_file(path: Path) -> tuple[int, int] | None:
    """(superblock offset, end-of-file address) from the HDF5 superblock, or None if not HDF5.

    The end-of-file address is relative to the base address, which for files written by h5py
    is where the superblock sits; the file's size should be ``base + eof``.
    """
    with open(path, "rb") as handle:
        for offset in _SUPERBLOCK_OFFSETS:
            handle.seek(offset)
            head = handle.read(128)
            if len(head) < 9:
                return None
            if head[:8] != HDF5_SIGNATURE:
                continue
            version = head[8]
            if version in (0, 1):
                size_offsets, _size_lengths = head[13], head[14]
                # signature 8, versions 4, reserved 1, shared header version 1... then sizes at 13/14,
                # reserved 1, leaf K 2, internal K 2, flags 4 = 24; version 1 adds 4 more.
                start = 24 + (4 if version == 1 else 0)
                fields = 4  # base address, free-space address, end-of-file address, driver info
            elif version in (2, 3):
                size_offsets = head[9]
                start = 12  # signature 8, version 1, offsets 1, lengths 1, flags 1
                fields = 3  # base address, extension address, end-of-file address
            else:
                return None
            if size_offsets not in (2, 4, 8) or start + fields * size_offsets > len(head):
                return None
            fmt = {2: "<H", 4: "<I", 8: "<Q"}[size_offsets]
            base = struct.unpack_from(fmt, head, start)[0]
            eof_at = start + 2 * size_offsets
            eof = struct.unpack_from(fmt, head, eof_at)[0]
            return (base, eof)
    return None


def check_size_and_superblock(path: Path, expected_size: int | None) -> Verdict:
    """The O(1) check: the size is the expected one and the superblock's end of file is the size."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Verdict(Problem.MISSING, "no such file")
    try:
        found = hdf5_end_of_file(path)
    except OSError as error:
        return Verdict(Problem.UNREADABLE, str(error))
    if found is None:
        return Verdict(Problem.NOT_HDF5, "no HDF5 superblock at the start of the file")
    base, eof = found
    stored = base + eof
    if size < stored:
        return Verdict(Problem.TRUNCATED, f"truncated file: size = {size}, stored end of file = {stored}")
    if expected_size is not None and size != expected_size:
        return Verdict(Problem.SIZE_MISMATCH, f"size is {size} bytes, expected {expected_size}")
    if size != stored:
        return Verdict(Problem.SIZE_MISMATCH, f"size is {size} bytes but the superblock says {stored}")
    return OK


def check_nwb(path: Path, expected_id: int) -> Verdict:
    """h5py opens the file, it has an ``nwb_version``, and ``int(identifier)`` is ``expected_id``."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "nwb_version" not in handle.attrs:
                return Verdict(Problem.UNREADABLE, "no nwb_version attribute: not an NWB file")
            raw = handle["identifier"][()] if "identifier" in handle else None
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        return Verdict(Problem.UNREADABLE, f"h5py cannot open it: {error}")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        identifier = int(text)
    except ValueError:
        return Verdict(Problem.WRONG_ID, f"identifier {text!r} is not an integer")
    if identifier != expected_id:
        return Verdict(Problem.WRONG_ID, f"identifier is {identifier}, expected {expected_id}")
    return OK

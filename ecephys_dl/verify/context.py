"""What the checks of one file share: the file to check, the pass it is checked in, and its meter."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ecephys_dl.layout import CachePath, FileKind
from ecephys_dl.published import PublishedFile
from ecephys_dl.records import FileRecord, RecordStore
from ecephys_dl.verify.model import NO_REFERENCE, NWB_KINDS, RECORD_REFERENCE, Kind, Level, Status

__all__ = ["Context", "Finding", "Meter", "Signature", "Stopped", "Target", "share", "signature"]

# What a check found: a status (OK with a note) and its detail; None is "nothing to say".
Finding = tuple[Status, str]
# What identifies one version of a file: size, modification time (ns), inode.
Signature = tuple[int, int, int]


class Stopped(Exception):
    """The pass was stopped in the middle of a file: it gets no result."""


@dataclass(frozen=True)
class Target:
    """One file to check: what its name says it is, its record, and the size it should have."""

    relative: str
    kind: Kind
    place: CachePath | None  # what the layout reads its name as; None for another name
    record: FileRecord | None
    size: int | None  # the size it should have: the record's, else the published one, else the caller's
    wanted: bool = False  # the caller expects it
    published: PublishedFile | None = None  # what the archive publishes of it

    @property
    def reference(self) -> str:
        """What its result is checked against: ``published:<dandiset>``, ``record`` or ``none``."""
        if self.published is not None:
            return self.published.reference
        return RECORD_REFERENCE if self.record is not None else NO_REFERENCE

    @property
    def expected_id(self) -> int | None:
        """The id an NWB file's identifier must be."""
        return self.place.nwb_id if self.place is not None else None

    @property
    def table(self) -> str | None:
        """The metadata table this file is (``units``), if it is one."""
        return self.place.name if self.place is not None and self.place.kind is FileKind.TABLE_CSV else None


class Meter:
    """One file's share of the progress total: what it reads is counted, never more than its share."""

    def __init__(self, advance: Callable[[int], None], share: int) -> None:
        self._advance = advance
        self._left = share

    def add(self, nbytes: int) -> None:
        step = min(nbytes, self._left)
        if step > 0:
            self._left -= step
            self._advance(step)

    def finish(self) -> None:
        self.add(self._left)


@dataclass
class Context:
    """The pass a file is checked in."""

    root: Path
    level: Level
    records: RecordStore
    stop: threading.Event
    advance: Callable[[int], None]


def share(target: Target, size: int, level: Level) -> int:
    """The bytes a file adds to the progress total at this level."""
    if level is Level.DEEP and target.kind in NWB_KINDS and target.record is None and target.published is None:
        return 2 * size  # every chunk through h5py, then every byte for the hashes
    return size


def signature(info: os.stat_result) -> Signature:
    """What identifies one version of a file, for carrying a result over to a later call."""
    return (info.st_size, info.st_mtime_ns, info.st_ino)

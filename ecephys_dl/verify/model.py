"""What a verify pass speaks of: levels, statuses, kinds of file, and the results it reports."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ecephys_dl.layout import FileKind

__all__ = [
    "LEVELS",
    "NO_REFERENCE",
    "NWB_KINDS",
    "RECORD_REFERENCE",
    "ExpectedFile",
    "FileResult",
    "Kind",
    "Level",
    "Status",
    "VerifyProgress",
    "VerifyReport",
    "VerifySummary",
    "count_problems",
    "kind_of",
]


# What a result was checked against, besides ``published:<dandiset>``.
RECORD_REFERENCE = "record"  # ecephys-dl's record of the file
NO_REFERENCE = "none"  # nothing: the file's own structure only


class Level(enum.StrEnum):
    """How hard to look; each level does everything the one before does."""

    QUICK = "quick"
    STANDARD = "standard"
    DEEP = "deep"

    @property
    def rank(self) -> int:
        return LEVELS.index(self)


LEVELS = (Level.QUICK, Level.STANDARD, Level.DEEP)


class Status(enum.StrEnum):
    """What a check found; the names users see."""

    OK = "ok"
    MISSING = "missing"
    TRUNCATED = "truncated"
    SIZE_MISMATCH = "size-mismatch"
    NOT_HDF5 = "not-hdf5"
    UNREADABLE = "unreadable"
    WRONG_ID = "wrong-id"
    HASH_MISMATCH = "hash-mismatch"  # changed since ecephys-dl fetched (or recorded) it
    DIFFERS_FROM_PUBLISHED = "differs-from-published"  # readable, but not the archive's bytes
    BAD_CSV = "bad-csv"
    BAD_MANIFEST = "bad-manifest"
    STRAY_PARTIAL = "stray-partial"

    @property
    def fails(self) -> bool:
        """Whether this status fails a pass: a leftover partial is reported but is not damage."""
        return self not in (Status.OK, Status.STRAY_PARTIAL)


class Kind(enum.StrEnum):
    """What a file is, as far as checking it goes."""

    SESSION_NWB = "session-nwb"
    LFP_NWB = "lfp-nwb"
    CSV = "csv"
    MANIFEST = "manifest"
    PARTIAL = "partial"
    OTHER = "other"  # recorded, but not a file whose content we know how to check


NWB_KINDS = (Kind.SESSION_NWB, Kind.LFP_NWB)

# How each kind of the layout is checked; a stimulus template has no check of its own (OTHER).
_KINDS = {
    FileKind.SESSION_NWB: Kind.SESSION_NWB,
    FileKind.LFP_NWB: Kind.LFP_NWB,
    FileKind.SESSION_METRICS_CSV: Kind.CSV,
    FileKind.TABLE_CSV: Kind.CSV,
    FileKind.TYPEWISE_METRICS_CSV: Kind.CSV,
    FileKind.MANIFEST: Kind.MANIFEST,
    FileKind.STIMULUS_TEMPLATE: Kind.OTHER,
}


def kind_of(kind: FileKind | None) -> Kind:
    """How a file of the layout's ``kind`` (None: not a name of the tree) is checked."""
    return Kind.OTHER if kind is None else _KINDS[kind]


@dataclass(frozen=True)
class ExpectedFile:
    """A file the caller says the cache should hold (``size`` when known)."""

    relative: str
    size: int | None = None


@dataclass(frozen=True)
class FileResult:
    """The outcome for one file: ``level`` is the level reached (where a problem was found)."""

    path: str
    kind: Kind
    size: int | None
    level: Level
    status: Status
    detail: str = ""
    reference: str = NO_REFERENCE  # what it was checked against: published:<dandiset>, record, or none

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": str(self.kind), "size": self.size, "level": str(self.level),
                "status": str(self.status), "detail": self.detail, "reference": self.reference}  # fmt: skip


@dataclass(frozen=True)
class VerifySummary:
    """Counts over a report; ``complete`` is False when the time limit stopped the pass."""

    files: int  # results in the report, carried over ones included
    bytes: int  # size of the data files those results cover
    ok: int
    problems: dict[str, int]  # status -> count, every status but ok
    seconds: float  # this call's time
    complete: bool
    level: Level
    carried: int = 0  # results carried over from earlier calls of the same pass
    remaining: int = 0  # files not reached (time limit or interruption)
    published_ok: int = 0  # ok results held to the published size (quick, standard) or digest (deep)

    def as_dict(self) -> dict[str, Any]:
        return {"level": str(self.level), "complete": self.complete, "files": self.files, "bytes": self.bytes,
                "ok": self.ok, "published_ok": self.published_ok, "problems": dict(self.problems), "seconds": round(self.seconds, 3),
                "carried": self.carried, "remaining": self.remaining}  # fmt: skip


@dataclass(frozen=True)
class VerifyReport:
    """Every file's result, in path order, and the summary."""

    results: tuple[FileResult, ...]
    summary: VerifySummary

    @property
    def ok(self) -> bool:
        """Nothing checked is damaged or missing (stray partials do not count)."""
        return not self.problems

    @property
    def problems(self) -> tuple[FileResult, ...]:
        """The results that fail the pass."""
        return tuple(r for r in self.results if r.status.fails)

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary.as_dict(), "passed": self.ok, "results": [r.as_dict() for r in self.results]}


class VerifyProgress(Protocol):
    """Listener of a pass. ``total`` once, with the bytes to read: each file's size, twice for an
    NWB file that deep reads both through h5py and for its hashes. ``advanced`` as bytes are
    read (per file, when it is done, at quick and standard). ``checked`` for each result found
    in this call (not for results carried over). Calls are serialised by the caller."""

    def total(self, nbytes: int) -> None: ...
    def advanced(self, nbytes: int) -> None: ...
    def checked(self, result: FileResult) -> None: ...


def count_problems(results: Sequence[FileResult]) -> dict[str, int]:
    """Status -> count over ``results``, every status but ok, in the order of :class:`Status`; none at zero."""
    counts = {str(s): 0 for s in Status if s is not Status.OK}
    for result in results:
        if result.status is not Status.OK:
            counts[str(result.status)] += 1
    return {k: v for k, v in counts.items() if v}

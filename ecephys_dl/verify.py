"""Check that the files of a cache are whole and sound, at one of three levels.

Which files: every NWB file, metadata CSV and ``manifest.json`` at its AllenSDK path, every file
ecephys-dl keeps a record of (absent: ``missing``), every file the caller expects (absent:
``missing``), and leftovers of interrupted writes (``*.part``, ``*.part.json``, ``.*.tmp``:
``stray-partial``). The stimulus templates are checked only if a record names them.

Levels, each doing what the one before does:

- ``quick``: the size is the recorded (or expected) size and the HDF5 superblock's end of file
  is the size; a CSV is not empty and ends with a newline. A few hundred bytes read per file,
  no h5py.
- ``standard``: h5py opens each NWB file, reads every group's and dataset's header (no data),
  and ``int(identifier)`` is the session or probe id of its name; pandas reads each CSV and the
  four tables have AllenSDK's header; ``manifest.json`` is one AllenSDK 0.3.0 accepts.
- ``deep``: every byte is read. A recorded file's SHA-256 must be its record's. An NWB file
  without a record has every dataset read through h5py (which checks fletcher32 checksums),
  and, when that passes, its hashes are recorded ("adopted"), so the next deep pass compares
  them. A flipped byte in unchecksummed data of an unrecorded file cannot be seen by anyone.

A zero-length or shorter-than-its-superblock HDF5 file is ``truncated``: that is what a write
killed early leaves. Stray partials are reported but do not fail a pass (a ``.part`` is a
resumable download); they are removed only with ``clean``, and then only when untouched for
ten minutes, since a fetch of another shard may be writing them.

Passes. The files of a level are checked in a fixed order, and which ones are done is kept in
``<cache>/.ecephys-dl/verify-state.json``, so a call stopped by its time limit (or interrupted)
is continued by the next call at the same level; results of files unchanged since (same size,
modification time and inode) are carried over. When every file is checked the pass is recorded
as the last full pass of its level (:func:`last_pass`) and the next call starts a new one.

Nothing on disk changes except that state file, adopted records, and what ``clean`` removes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ecephys_dl.errors import CacheError
from ecephys_dl.integrity import HDF5_SIGNATURE, check_nwb, check_size_and_superblock
from ecephys_dl.layout import MANIFEST_NAME, METADATA_TABLES, SESSION_TYPES, CacheLayout, write_atomic
from ecephys_dl.records import STATE_DIR, FileRecord, RecordStore, safe_relative, utc_now

if TYPE_CHECKING:
    import h5py

__all__ = [
    "CLEAN_AFTER",
    "STATE_NAME",
    "ExpectedFile",
    "FileResult",
    "Kind",
    "Level",
    "Status",
    "VerifyProgress",
    "VerifyReport",
    "VerifySummary",
    "classify",
    "last_pass",
    "verify_cache",
]

STATE_NAME = "verify-state.json"
_STATE_FORMAT = "ecephys-dl-verify/1"
# A leftover younger than this may belong to a fetch still running (another shard's lock).
CLEAN_AFTER = 600.0
# Large reads keep hashing at the speed of the hash itself, not of the system calls.
_BLOCK = 8 << 20
# Bytes of decoded data per h5py read when every chunk of a file is read.
_SLAB = 16 << 20
# The state is written at most this often (and at the end), not after each file.
_SAVE_EVERY = 5.0

_SESSION_DIR = re.compile(r"session_([1-9][0-9]{0,18})")
_LFP = re.compile(r"probe_([1-9][0-9]{0,18})_lfp\.nwb")
_PLAIN_MD5 = re.compile(r'"?([0-9a-fA-F]{32})"?')


class Level(enum.StrEnum):
    """How hard to look; each level does everything the one before does."""

    QUICK = "quick"
    STANDARD = "standard"
    DEEP = "deep"

    @property
    def rank(self) -> int:
        return _LEVELS.index(self)


_LEVELS = (Level.QUICK, Level.STANDARD, Level.DEEP)


class Status(enum.StrEnum):
    """What a check found; the names users see."""

    OK = "ok"
    MISSING = "missing"
    TRUNCATED = "truncated"
    SIZE_MISMATCH = "size-mismatch"
    NOT_HDF5 = "not-hdf5"
    UNREADABLE = "unreadable"
    WRONG_ID = "wrong-id"
    HASH_MISMATCH = "hash-mismatch"
    BAD_CSV = "bad-csv"
    BAD_MANIFEST = "bad-manifest"
    STRAY_PARTIAL = "stray-partial"

    @property
    def fails(self) -> bool:
        """Whether this status fails a pass: a leftover partial is reported but is not damage."""
        return self not in (Status.OK, Status.STRAY_PARTIAL)


class Kind(enum.StrEnum):
    """What a file is."""

    SESSION_NWB = "session-nwb"
    LFP_NWB = "lfp-nwb"
    CSV = "csv"
    MANIFEST = "manifest"
    PARTIAL = "partial"
    OTHER = "other"  # recorded, but not a file whose content we know how to check


_NWB = (Kind.SESSION_NWB, Kind.LFP_NWB)


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

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": str(self.kind), "size": self.size, "level": str(self.level),
                "status": str(self.status), "detail": self.detail}  # fmt: skip


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

    def as_dict(self) -> dict[str, Any]:
        return {"level": str(self.level), "complete": self.complete, "files": self.files, "bytes": self.bytes,
                "ok": self.ok, "problems": dict(self.problems), "seconds": round(self.seconds, 3),
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


def classify(relative: str) -> tuple[Kind, int | None] | None:
    """The kind of a cache path and, for an NWB file, the session or probe id its name carries."""
    parts = relative.split("/")
    if len(parts) == 1:
        name = parts[0]
        if name == MANIFEST_NAME:
            return Kind.MANIFEST, None
        if name in _TABLE_NAMES or name in _TYPEWISE_NAMES:
            return Kind.CSV, None
    elif len(parts) == 2 and (folder := _SESSION_DIR.fullmatch(parts[0])):
        session = folder.group(1)
        if parts[1] == f"session_{session}.nwb":
            return Kind.SESSION_NWB, int(session)
        if parts[1] == f"session_{session}_analysis_metrics.csv":
            return Kind.CSV, None
        if lfp := _LFP.fullmatch(parts[1]):
            return Kind.LFP_NWB, int(lfp.group(1))
    return None


_TABLE_NAMES = frozenset(f"{t}.csv" for t in METADATA_TABLES)
_TYPEWISE_NAMES = frozenset(f"{t}_analysis_metrics.csv" for t in SESSION_TYPES)


def _is_leftover(name: str) -> bool:
    return name.endswith((".part", ".part.json")) or (name.startswith(".") and name.endswith(".tmp"))


# -- finding the files ---------------------------------------------------------------------------


def _listing(folder: str | Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def _discover(root: Path) -> tuple[list[str], list[str]]:
    """(files at known paths, leftovers) under ``root``: one directory listing per folder."""
    found: list[str] = []
    leftovers: list[str] = []
    for entry in _listing(root):
        if _is_leftover(entry.name):
            leftovers.append(entry.name)
        elif not entry.is_dir():
            if classify(entry.name) is not None:
                found.append(entry.name)
        elif _SESSION_DIR.fullmatch(entry.name) or entry.name.startswith("natural_"):
            for inner in _listing(entry.path):
                relative = f"{entry.name}/{inner.name}"
                if _is_leftover(inner.name):
                    leftovers.append(relative)
                elif classify(relative) is not None:
                    found.append(relative)
        elif entry.name == STATE_DIR and not entry.is_symlink():
            # Records and the pass state are written atomically too, and may leave the same leftovers.
            for folder, _, names in os.walk(entry.path):
                place = Path(folder).relative_to(root).as_posix()
                leftovers += [f"{place}/{name}" for name in names if _is_leftover(name)]
    return found, leftovers


# -- the checks ----------------------------------------------------------------------------------


class _Stopped(Exception):
    """The pass was stopped in the middle of a file: it gets no result."""


@dataclass(frozen=True)
class _Target:
    relative: str
    kind: Kind
    expected_id: int | None
    record: FileRecord | None
    size: int | None  # the size it should have: the record's, else the caller's
    wanted: bool = False  # the caller expects it


Finding = tuple[Status, str]


class _Meter:
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
class _Context:
    root: Path
    level: Level
    records: RecordStore
    stop: threading.Event
    advance: Callable[[int], None]


def _share(target: _Target, size: int, level: Level) -> int:
    """The bytes a file adds to the progress total at this level."""
    if level is Level.DEEP and target.kind in _NWB and target.record is None:
        return 2 * size  # every chunk through h5py, then every byte for the hashes
    return size


def _signature(info: os.stat_result) -> list[int]:
    """What identifies one version of a file, for carrying a result over to a later call."""
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _check(ctx: _Context, target: _Target) -> tuple[FileResult, list[int] | None]:
    """Check one file up to the context's level; the result and the file's signature."""
    path = ctx.root / target.relative
    try:
        info = path.stat()
    except FileNotFoundError:
        return _missing(ctx.root, target), None
    except OSError as error:
        return FileResult(target.relative, target.kind, None, Level.QUICK, Status.UNREADABLE, str(error)), None
    if not stat.S_ISREG(info.st_mode):
        return FileResult(target.relative, target.kind, None, Level.QUICK, Status.UNREADABLE, "not a regular file"), None
    size = info.st_size
    meter = _Meter(ctx.advance, _share(target, size, ctx.level))
    note = ""
    try:
        for level in _LEVELS[: ctx.level.rank + 1]:
            try:
                finding = _STEPS[level](ctx, target, path, info, meter)
            except OSError as error:
                finding = (Status.UNREADABLE, f"cannot be read: {error.strerror or error}")
            if finding is not None:
                status, detail = finding
                if status is not Status.OK:
                    return FileResult(target.relative, target.kind, size, level, status, detail), _signature(info)
                note = detail
    finally:
        meter.finish()
    return FileResult(target.relative, target.kind, size, ctx.level, Status.OK, note), _signature(info)


def _missing(root: Path, target: _Target) -> FileResult:
    if target.record is not None:
        why = f"recorded ({target.record.size} bytes) but not in the cache"
    else:
        why = "expected but not in the cache" if target.wanted else "went away while the cache was checked"
    if (root / (target.relative + ".part")).exists():
        why += "; a partial download of it is there (fetch resumes it)"
    return FileResult(target.relative, target.kind, None, Level.QUICK, Status.MISSING, why)


def _quick(ctx: _Context, target: _Target, path: Path, info: os.stat_result, meter: _Meter) -> Finding | None:
    size = info.st_size
    if target.kind in _NWB:
        return _quick_hdf5(path, size, target.size)
    if target.size is not None and size != target.size:
        return Status.SIZE_MISMATCH, f"size is {size} bytes, expected {target.size}"
    if target.kind is Kind.CSV:
        if size == 0:
            return Status.BAD_CSV, "empty file"
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                return Status.BAD_CSV, "does not end with a newline: cut short"
    elif target.kind is Kind.MANIFEST and size == 0:
        return Status.BAD_MANIFEST, "empty file"
    return None


def _quick_hdf5(path: Path, size: int, expected: int | None) -> Finding | None:
    if size == 0:
        return Status.TRUNCATED, "empty file" + (f", expected {expected} bytes" if expected else "")
    verdict = check_size_and_superblock(path, expected)
    if verdict.ok:
        return None
    status = Status(str(verdict.problem))
    if status is Status.NOT_HDF5:
        with open(path, "rb") as handle:
            head = handle.read(128)
        if len(head) < 128 and head[:8] == HDF5_SIGNATURE[: len(head[:8])]:
            return Status.TRUNCATED, f"the file ends inside its HDF5 superblock ({size} bytes)"
        shown = head.lstrip()[:24]
        looks = "; it looks like an HTML page" if shown[:1] == b"<" else ""
        return status, f"no HDF5 superblock: it starts with {shown!r}{looks}"
    return status, verdict.detail


def _standard(ctx: _Context, target: _Target, path: Path, info: os.stat_result, meter: _Meter) -> Finding | None:
    if target.kind in _NWB:
        assert target.expected_id is not None
        verdict = check_nwb(path, target.expected_id)
        if not verdict.ok:
            return Status(str(verdict.problem)), verdict.detail
        return _walk_headers(path)
    if target.kind is Kind.CSV:
        return _read_csv(path, target.relative)
    if target.kind is Kind.MANIFEST:
        from ecephys_dl.errors import ManifestError
        from ecephys_dl.manifest import check_manifest

        try:
            check_manifest(path)
        except ManifestError as error:
            return Status.BAD_MANIFEST, error.message
    return None


def _walk_headers(path: Path) -> Finding | None:
    """Open every group and dataset header (shape, type), reading no data."""
    import h5py

    where = ""

    def visit(name: str, item: h5py.Group | h5py.Dataset) -> None:
        nonlocal where
        where = name
        if isinstance(item, h5py.Dataset):
            _ = (item.shape, item.dtype)

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as error:
        return Status.UNREADABLE, f"its HDF5 headers cannot be read (last read: /{where}): {error}"
    return None


def _read_csv(path: Path, relative: str) -> Finding | None:
    import pandas as pd

    from ecephys_dl.catalog import RAW_HEADERS

    name = relative.rsplit("/", 1)[-1]
    table = name[: -len(".csv")] if name in _TABLE_NAMES else None
    index = "id" if table else "ecephys_unit_id"
    try:
        frame = pd.read_csv(path, index_col=index)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' parser errors are ValueErrors
        return Status.BAD_CSV, f"pandas cannot read it with index {index!r}: {str(error).strip()}"
    if table:
        header = RAW_HEADERS[table]
        columns = [frame.index.name, *map(str, frame.columns)]
        if tuple(columns[: len(header)]) != header:
            return Status.BAD_CSV, f"columns start {columns[: len(header)]}, not AllenSDK's {list(header)}"
    return None


def _deep(ctx: _Context, target: _Target, path: Path, info: os.stat_result, meter: _Meter) -> Finding | None:
    record = target.record
    if record is None:
        if target.kind not in _NWB:
            return None  # a table or manifest without a record: there is no hash to compare with
        finding = _read_every_chunk(path, ctx.stop, meter, info.st_size)
        if finding is not None:
            return finding
        sha256, md5 = _digest(path, ctx.stop, meter, md5=True)
        return _adopt(ctx, target, path, info, sha256, md5)
    etag = _plain_md5(record.etag)
    # With the SHA-256 equal to the record's, the bytes are those the record's MD5 was taken of,
    # so the MD5 is computed again only when the record has none to compare with the ETag.
    sha256, md5 = _digest(path, ctx.stop, meter, md5=record.md5 is None and etag is not None)
    if sha256 != record.sha256:
        when = record.verified_at or record.fetched_at or "earlier"
        return Status.HASH_MISMATCH, f"SHA-256 {sha256[:16]}... is not the recorded {record.sha256[:16]}... (verified {when}): the bytes changed"
    known = md5 or record.md5
    if etag is not None and known is not None and known.lower() != etag:
        return Status.HASH_MISMATCH, f"MD5 {known} is not the S3 ETag {etag}: the file is not the server's"
    return None


_STEPS: dict[Level, Callable[[_Context, _Target, Path, os.stat_result, _Meter], Finding | None]] = {
    Level.QUICK: _quick,
    Level.STANDARD: _standard,
    Level.DEEP: _deep,
}


def _plain_md5(etag: str | None) -> str | None:
    """The MD5 an S3 ETag is, or None for a multipart ETag (``"<md5>-N"``) or another validator."""
    match = _PLAIN_MD5.fullmatch(etag.strip()) if etag else None
    return match.group(1).lower() if match else None


def _digest(path: Path, stop: threading.Event, meter: _Meter, *, md5: bool) -> tuple[str, str | None]:
    """SHA-256 (and MD5) of the file in one pass of large reads; hashlib releases the GIL."""
    sha = hashlib.sha256()
    second = hashlib.md5(usedforsecurity=False) if md5 else None
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := handle.readinto(buffer):
            if stop.is_set():
                raise _Stopped
            sha.update(view[:n])
            if second is not None:
                second.update(view[:n])
            meter.add(n)
    return sha.hexdigest(), second.hexdigest() if second is not None else None


def _read_every_chunk(path: Path, stop: threading.Event, meter: _Meter, size: int) -> Finding | None:
    """Read every dataset through h5py, so its filters run: a bad fletcher32 checksum raises."""
    import h5py

    with h5py.File(path, "r") as handle:
        names: list[str] = []

        def collect(name: str, item: h5py.Group | h5py.Dataset) -> None:
            if isinstance(item, h5py.Dataset):
                names.append(name)

        handle.visititems(collect)
        read = 0
        for name in names:
            try:
                read += _read_dataset(handle[name], stop, meter)
            except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
                return Status.UNREADABLE, f"dataset /{name} cannot be read: {error}"
    meter.add(size - read)  # the file's own structure: the rest of its share of this read
    return None


def _read_dataset(dataset: h5py.Dataset, stop: threading.Event, meter: _Meter) -> int:
    """Read a dataset in slabs of whole chunks along its first axis; the bytes it has on disk."""
    shape = dataset.shape
    if shape is None or dataset.size == 0:
        return 0
    stored = int(dataset.id.get_storage_size())
    if len(shape) == 0:
        dataset[()]
        meter.add(stored)
        return stored
    row = max(1, dataset.dtype.itemsize * prod(shape[1:]))
    step = max(1, _SLAB // row)
    if dataset.chunks:
        rows = dataset.chunks[0]
        step = max(rows, step // rows * rows)
    counted = 0
    for start in range(0, shape[0], step):
        if stop.is_set():
            raise _Stopped
        end = min(start + step, shape[0])
        dataset[start:end]
        part = stored * end // shape[0] - counted
        meter.add(part)
        counted += part
    return counted


def _adopt(ctx: _Context, target: _Target, path: Path, before: os.stat_result, sha256: str, md5: str | None) -> Finding:
    """Record the hashes of a sound file that had no record, unless it changed or got one meanwhile."""
    try:
        if _signature(path.stat()) != _signature(before):
            return Status.OK, "sound, but it changed while being read: its hashes are not recorded"
    except OSError:
        return Status.OK, "sound, but it went away while being read: its hashes are not recorded"
    if ctx.records.get(target.relative) is not None:
        return Status.OK, "sound; a record of it was written meanwhile"
    record = FileRecord(path=target.relative, size=before.st_size, sha256=sha256, md5=md5, verified_at=utc_now(),
                        verified_level=str(Level.DEEP), extra={"adopted": True})  # fmt: skip
    try:
        ctx.records.put(record)
    except (OSError, CacheError) as error:
        return Status.OK, f"sound, but its hashes could not be recorded: {error}"
    return Status.OK, "sound; it had no record, its hashes are recorded now"


def _leftover(root: Path, relative: str, *, clean: bool, now: float) -> FileResult:
    """A stray partial, removed when asked and old enough."""
    path = root / relative
    try:
        info = path.lstat()
    except OSError:
        return FileResult(relative, Kind.PARTIAL, None, Level.QUICK, Status.STRAY_PARTIAL, "went away")
    name = path.name
    if name.endswith(".part"):
        resumable = path.with_name(name + ".json").exists()  # the state a resume needs (partial.sidecar_path)
        what = "partial download" + (" (fetch resumes it)" if resumable else " without its state (fetch starts it again)")
    elif name.endswith(".part.json"):
        what = "state of a partial download"
    else:
        what = "leftover of an interrupted write"
    if clean:
        age = now - info.st_mtime
        if age < CLEAN_AFTER:
            what += f"; kept: written {age:.0f} s ago, a running fetch may own it"
        else:
            try:
                path.unlink()
                what += "; removed"
            except OSError as error:
                what += f"; cannot remove it: {error.strerror or error}"
    return FileResult(relative, Kind.PARTIAL, info.st_size, Level.QUICK, Status.STRAY_PARTIAL, what)


# -- the pass state ------------------------------------------------------------------------------


def _state_path(root: Path) -> Path:
    return root / STATE_DIR / STATE_NAME


def _load_state(root: Path) -> dict[str, Any]:
    """The state file's content, or a fresh state when it is absent or not a sound one."""
    fresh: dict[str, Any] = {"format": _STATE_FORMAT, "passes": {}, "finished": {}}
    try:
        fd = os.open(_state_path(root), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError, RecursionError):
        return fresh
    if not isinstance(data, dict) or data.get("format") != _STATE_FORMAT:
        return fresh
    passes = data.get("passes")
    finished = data.get("finished")
    if not isinstance(passes, dict) or not isinstance(finished, dict):
        return fresh
    state = fresh
    for level in _LEVELS:
        current = passes.get(str(level))
        if (
            isinstance(current, dict)
            and isinstance(current.get("id"), str)
            and isinstance(current.get("started_at"), str)
            and isinstance(current.get("checked"), dict)
        ):
            checked = {k: v for k, v in current["checked"].items() if (e := _entry(v)) is not None and e[1].path == k}
            seconds = current.get("seconds")
            state["passes"][str(level)] = {
                "id": current["id"], "level": str(level), "started_at": current["started_at"],
                "seconds": float(seconds) if isinstance(seconds, (int, float)) else 0.0, "checked": checked,
            }  # fmt: skip
        done = finished.get(str(level))
        if isinstance(done, dict) and isinstance(done.get("finished_at"), str):
            state["finished"][str(level)] = done
    if data.get("last") in state["finished"]:
        state["last"] = data["last"]
    return state


def _entry(value: Any) -> tuple[list[int], FileResult] | None:
    """A checked file of a pass state: its signature and result, or None if malformed."""
    if not isinstance(value, dict):
        return None
    signature = value.get("signature")
    if not (isinstance(signature, list) and len(signature) == 3 and all(type(v) is int for v in signature)):
        return None
    try:
        result = FileResult(str(value["path"]), Kind(value["kind"]), value.get("size"), Level(value["level"]),
                            Status(value["status"]), str(value.get("detail", "")))  # fmt: skip
    except (KeyError, ValueError, TypeError):
        return None
    if result.size is not None and type(result.size) is not int:
        return None
    return signature, result


def _save_state(root: Path, state: dict[str, Any]) -> None:
    """Write the state whole; a cache we cannot write (read-only, a link in the way) keeps none."""
    folder = root / STATE_DIR
    if folder.is_symlink():
        return
    try:
        write_atomic(_state_path(root), json.dumps(state, separators=(",", ":")).encode())
    except OSError:
        pass


def last_pass(cache_dir: Path) -> dict[str, Any] | None:
    """The last full verify pass and the ones in progress, for ``status``; None if there was none.

    ``last_full_pass`` is the latest pass finished at any level (``level``, ``started_at``,
    ``finished_at``, ``files``, ``bytes``, ``ok``, ``problems``, ``seconds``), ``full_passes``
    the latest of each level, and ``in_progress`` each level's unfinished pass (``id``,
    ``started_at``, ``checked``: files done so far, ``problems``).
    """
    root = Path(cache_dir)
    if not _state_path(root).exists():
        return None
    state = _load_state(root)
    finished = state["finished"]
    latest = finished.get(state["last"]) if isinstance(state.get("last"), str) else None
    progress = {}
    for level, current in state["passes"].items():
        results = [entry[1] for entry in map(_entry, current["checked"].values()) if entry is not None]
        progress[level] = {"id": current.get("id"), "started_at": current.get("started_at"), "checked": len(results),
                           "problems": _count(results)}  # fmt: skip
    if latest is None and not progress:
        return None
    return {"last_full_pass": latest, "full_passes": finished, "in_progress": progress}


def _count(results: Sequence[FileResult]) -> dict[str, int]:
    counts = {str(s): 0 for s in Status if s is not Status.OK}
    for result in results:
        if result.status is not Status.OK:
            counts[str(result.status)] += 1
    return {k: v for k, v in counts.items() if v}


# -- the pass ------------------------------------------------------------------------------------


class _Serialised:
    """A progress listener whose calls from the worker threads come one at a time."""

    def __init__(self, progress: VerifyProgress | None) -> None:
        self._progress = progress
        self._lock = threading.Lock()

    def total(self, nbytes: int) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.total(nbytes)

    def advanced(self, nbytes: int) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.advanced(nbytes)

    def checked(self, result: FileResult) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.checked(result)


def verify_cache(
    cache_dir: Path,
    *,
    level: Level = Level.STANDARD,
    jobs: int = 4,
    expected: Sequence[ExpectedFile] = (),
    clean: bool = False,
    time_limit: float | None = None,
    progress: VerifyProgress | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> VerifyReport:
    """Check the cache's files at ``level``, ``jobs`` files at a time, and report on each.

    With ``time_limit`` (seconds by ``clock``) no file is started after that long, except the
    first, which every call checks; the files not reached are not reported, and the next call at
    the same level continues the pass.
    ``expected`` files that are absent are reported ``missing``. ``clean`` removes stray
    partials older than :data:`CLEAN_AFTER` seconds.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    level = Level(level)
    started = clock()
    root = Path(cache_dir)
    records = RecordStore(CacheLayout(root))
    listener = _Serialised(progress)
    targets, leftovers = _targets(root, records, expected)
    state = _load_state(root)
    current, earlier = _open_pass(state, level)

    results: dict[str, FileResult] = {}
    todo: list[_Target] = []
    total = 0
    for target in targets:
        try:
            info = (root / target.relative).stat()
        except FileNotFoundError:
            # Cheap to say, so said at once, whatever the time limit, and never carried over.
            results[target.relative] = _missing(root, target)
            listener.checked(results[target.relative])
            continue
        except OSError:
            todo.append(target)  # the check says what is wrong with it
            continue
        before = earlier.get(target.relative)
        if before is not None and before[0] == _signature(info) and before[1].kind is target.kind:
            results[target.relative] = before[1]
            current["checked"][target.relative] = {**before[1].as_dict(), "signature": before[0]}
            continue
        todo.append(target)
        total += _share(target, info.st_size, level)
    carried = len(current["checked"])
    listener.total(total)

    last_save = clock()

    def done(result: FileResult, signature: list[int] | None) -> None:
        # Called under the pass's lock.
        nonlocal last_save
        results[result.path] = result
        if signature is not None:
            current["checked"][result.path] = {**result.as_dict(), "signature": signature}
        if clock() - last_save >= _SAVE_EVERY:
            last_save = clock()
            _save_state(root, state)

    def time_is_up() -> bool:
        return time_limit is not None and clock() - started >= time_limit

    ctx = _Context(root, level, records, threading.Event(), listener.advanced)
    try:
        reached = _run_checks(ctx, todo, jobs=jobs, time_is_up=time_is_up, checked=listener.checked, done=done)
        now = time.time()
        for relative in sorted(set(leftovers)):
            results[relative] = _leftover(root, relative, clean=clean, now=now)
            listener.checked(results[relative])
        ordered = tuple(results[k] for k in sorted(results))
        seconds = clock() - started
        data = [r for r in ordered if r.status not in (Status.MISSING, Status.STRAY_PARTIAL)]
        summary = VerifySummary(files=len(ordered), bytes=sum(r.size or 0 for r in data),
                                ok=sum(1 for r in ordered if r.status is Status.OK), problems=_count(ordered),
                                seconds=seconds, complete=reached == len(todo), level=level, carried=carried,
                                remaining=len(todo) - reached)  # fmt: skip
        _close_pass(state, current, summary)
    finally:
        _save_state(root, state)
    return VerifyReport(ordered, summary)


def _targets(root: Path, records: RecordStore, expected: Sequence[ExpectedFile]) -> tuple[list[_Target], list[str]]:
    """The files to check (found, recorded or expected), in path order, and the leftovers found."""
    found, leftovers = _discover(root)
    recorded = {r.path: r for r in records.all()}
    sizes: dict[str, int | None] = {}
    for item in expected:
        if not safe_relative(item.relative):
            raise ValueError(f"not a path inside the cache: {item.relative!r}")
        sizes[item.relative] = item.size
    targets = []
    for relative in sorted(set(found) | set(recorded) | set(sizes)):
        kind, expected_id = classify(relative) or (Kind.OTHER, None)
        record = recorded.get(relative)
        size = record.size if record is not None else sizes.get(relative)
        targets.append(_Target(relative, kind, expected_id, record, size, wanted=relative in sizes))
    return targets, leftovers


def _open_pass(state: dict[str, Any], level: Level) -> tuple[dict[str, Any], dict[str, tuple[list[int], FileResult]]]:
    """This level's pass (the unfinished one, else a new one), emptied of its checked files,
    which are returned with their signatures to be carried over where still valid."""
    current = state["passes"].get(str(level))
    if current is None:
        current = {"id": uuid.uuid4().hex[:12], "level": str(level), "started_at": utc_now(), "seconds": 0.0, "checked": {}}
        state["passes"][str(level)] = current
    earlier = {k: e for k, v in current["checked"].items() if (e := _entry(v)) is not None}
    current["checked"] = {}
    return current, earlier


def _close_pass(state: dict[str, Any], current: dict[str, Any], summary: VerifySummary) -> None:
    """Add this call's time to the pass; a complete pass becomes its level's last full pass."""
    current["seconds"] = float(current.get("seconds") or 0.0) + summary.seconds
    if not summary.complete:
        return
    level = str(summary.level)
    state["passes"].pop(level, None)
    state["finished"][level] = {
        "id": current["id"], "level": level, "started_at": current["started_at"], "finished_at": utc_now(),
        "files": summary.files, "bytes": summary.bytes, "ok": summary.ok, "problems": summary.problems,
        "seconds": round(current["seconds"], 3),
    }  # fmt: skip
    state["last"] = level


def _run_checks(ctx: _Context, todo: Sequence[_Target], *, jobs: int, time_is_up: Callable[[], bool],
                checked: Callable[[FileResult], None], done: Callable[[FileResult, list[int] | None], None]) -> int:  # fmt: skip
    """Check the files, ``jobs`` at a time, starting none once the time is up; how many were checked.

    The first file is started whatever the time: every call with a time limit makes progress, so
    calls repeated with however short a limit finish the pass.
    """
    lock = threading.Lock()
    queue = iter(todo)
    reached = 0
    started = 0

    def worker() -> None:
        nonlocal reached, started
        while True:
            with lock:
                if ctx.stop.is_set() or (started and time_is_up()):
                    return
                target = next(queue, None)
                started += 1
            if target is None:
                return
            try:
                result, signature = _check(ctx, target)
            except _Stopped:
                return
            with lock:
                reached += 1
                done(result, signature)
            checked(result)

    workers = min(jobs, max(1, len(todo)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            ctx.stop.set()  # the other workers stop at their next read; the caller keeps the state
            raise
    return reached

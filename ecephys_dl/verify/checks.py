"""The checks of one file, level by level (quick and standard here, deep in :mod:`.deep`), and
the reports on a missing file and on a leftover of an interrupted write."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ecephys_dl.integrity import HDF5_SIGNATURE, check_nwb, check_size_and_superblock
from ecephys_dl.layout import PART_STATE_SUFFIX, PART_SUFFIX, part_path, sidecar_path
from ecephys_dl.verify.context import Context, Finding, Meter, Signature, Target, share, signature
from ecephys_dl.verify.deep import deep
from ecephys_dl.verify.model import LEVELS, NWB_KINDS, FileResult, Kind, Level, Status

__all__ = ["CLEAN_AFTER", "check", "leftover", "missing"]

# A leftover younger than this may belong to a fetch still running (another shard's lock).
CLEAN_AFTER = 600.0


def check(ctx: Context, target: Target) -> tuple[FileResult, Signature | None]:
    """Check one file up to the context's level; the result (saying what it was checked against) and the file's signature."""
    result, found = _check(ctx, target)
    return replace(result, reference=target.reference), found


def _check(ctx: Context, target: Target) -> tuple[FileResult, Signature | None]:
    path = ctx.root / target.relative
    try:
        info = path.stat()
    except FileNotFoundError:
        return missing(ctx.root, target), None
    except OSError as error:
        return FileResult(target.relative, target.kind, None, Level.QUICK, Status.UNREADABLE, str(error)), None
    if not stat.S_ISREG(info.st_mode):
        return FileResult(target.relative, target.kind, None, Level.QUICK, Status.UNREADABLE, "not a regular file"), None
    size = info.st_size
    meter = Meter(ctx.advance, share(target, size, ctx.level))
    note = ""
    try:
        for level in LEVELS[: ctx.level.rank + 1]:
            try:
                finding = _STEPS[level](ctx, target, path, info, meter)
            except OSError as error:
                finding = (Status.UNREADABLE, f"cannot be read: {error.strerror or error}")
            if finding is not None:
                status, detail = finding
                if status is not Status.OK:
                    return FileResult(target.relative, target.kind, size, level, status, detail), signature(info)
                note = detail
    finally:
        meter.finish()
    return FileResult(target.relative, target.kind, size, ctx.level, Status.OK, note), signature(info)


def missing(root: Path, target: Target) -> FileResult:
    """The result of a file that is not there, saying why it was looked for."""
    if target.record is not None:
        why = f"recorded ({target.record.size} bytes) but not in the cache"
    else:
        why = "expected but not in the cache" if target.wanted else "went away while the cache was checked"
    if part_path(root / target.relative).exists():
        why += "; a partial download of it is there (fetch resumes it)"
    return FileResult(target.relative, target.kind, None, Level.QUICK, Status.MISSING, why, target.reference)


def _quick(ctx: Context, target: Target, path: Path, info: os.stat_result, meter: Meter) -> Finding | None:
    size = info.st_size
    if target.kind in NWB_KINDS:
        published, record = target.published, target.record
        if published is not None and record is not None and record.size == size != published.size:
            kept = " (kept with --accept-unpublished)" if record.extra.get("differs_from_published") else ""
            return Status.DIFFERS_FROM_PUBLISHED, f"size is {size} bytes, the published size is {published.size} (dandiset {published.dandiset}){kept}"
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


def _standard(ctx: Context, target: Target, path: Path, info: os.stat_result, meter: Meter) -> Finding | None:
    if target.kind in NWB_KINDS:
        assert target.expected_id is not None
        verdict = check_nwb(path, target.expected_id)
        if not verdict.ok:
            return Status(str(verdict.problem)), verdict.detail
        return _walk_headers(path)
    if target.kind is Kind.CSV:
        return _read_csv(path, target.table)
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


def _read_csv(path: Path, table: str | None) -> Finding | None:
    """pandas reads the CSV; a metadata ``table`` must have AllenSDK's header."""
    import pandas as pd

    from ecephys_dl.catalog import RAW_HEADERS

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


_STEPS: dict[Level, Callable[[Context, Target, Path, os.stat_result, Meter], Finding | None]] = {
    Level.QUICK: _quick,
    Level.STANDARD: _standard,
    Level.DEEP: deep,
}


def leftover(root: Path, relative: str, *, clean: bool, now: float) -> FileResult:
    """A stray partial, removed when asked and old enough."""
    path = root / relative
    try:
        info = path.lstat()
    except OSError:
        return FileResult(relative, Kind.PARTIAL, None, Level.QUICK, Status.STRAY_PARTIAL, "went away")
    name = path.name
    if name.endswith(PART_SUFFIX):
        resumable = sidecar_path(path).exists()  # the state a resume needs
        what = "partial download" + (" (fetch resumes it)" if resumable else " without its state (fetch starts it again)")
    elif name.endswith(PART_STATE_SUFFIX):
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

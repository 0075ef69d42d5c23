"""The deep level: every byte read, hashes compared with the record and the published digest.

A recorded file's SHA-256 must be its record's (else ``hash-mismatch``: it changed since
ecephys-dl fetched it), and its MD5 the S3 ETag, when that is a plain MD5. A file the archive
publishes must have the published SHA-256 (else ``differs-from-published``: readable, but not the
archive's bytes); one without a record is then recorded ("adopted"), no h5py read needed. An NWB
file with neither has every dataset read through h5py, so fletcher32 checksums are checked, and
when that passes its hashes are recorded. :func:`judge_digest` is the decision, a pure function.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING

from ecephys_dl.errors import CacheError
from ecephys_dl.published import PublishedFile
from ecephys_dl.records import FileRecord, utc_now
from ecephys_dl.verify.context import Context, Finding, Meter, Stopped, Target, signature
from ecephys_dl.verify.model import NWB_KINDS, Level, Status

if TYPE_CHECKING:
    import h5py

__all__ = ["deep", "judge_digest"]

# Large reads keep hashing at the speed of the hash itself, not of the system calls.
_BLOCK = 8 << 20
# Bytes of decoded data per h5py read when every chunk of a file is read.
_SLAB = 16 << 20

_PLAIN_MD5 = re.compile(r'"?([0-9a-fA-F]{32})"?')


def deep(ctx: Context, target: Target, path: Path, info: os.stat_result, meter: Meter) -> Finding | None:
    record, published = target.record, target.published
    if record is None and published is None:
        if target.kind not in NWB_KINDS:
            return None  # a table or manifest without a record: there is no hash to compare with
        finding = _read_every_chunk(path, ctx.stop, meter, info.st_size)
        if finding is not None:
            return finding
        sha256, md5 = _digest(path, ctx.stop, meter, md5=True)
        return _adopt(ctx, target, path, info, sha256, md5)
    etag = _plain_md5(record.etag) if record is not None else None
    # With the SHA-256 equal to the record's, the bytes are those the record's MD5 was taken of,
    # so the MD5 is computed again only when the record has none to compare with the ETag.
    wants_md5 = record is None or (record.md5 is None and etag is not None)
    sha256, md5 = _digest(path, ctx.stop, meter, md5=wants_md5)
    finding = judge_digest(sha256, record, published)
    if finding is not None and finding[0] is not Status.OK:
        return finding
    if record is None:
        return _adopt(ctx, target, path, info, sha256, md5, sound=finding[1] if finding else "sound")
    known = md5 or record.md5
    if etag is not None and known is not None and known.lower() != etag:
        return Status.HASH_MISMATCH, f"MD5 {known} is not the S3 ETag {etag}: the file is not the server's"
    return finding


def judge_digest(sha256: str, record: FileRecord | None, published: PublishedFile | None) -> Finding | None:
    """What a file's SHA-256 says, held against ecephys-dl's record and the published digest.

    Changed since the record: ``hash-mismatch``; not the published digest: ``differs-from-published``;
    the published digest: ok, with a note; nothing to hold it against: None.
    """
    if record is not None and sha256 != record.sha256:
        when = record.verified_at or record.fetched_at or "earlier"
        return Status.HASH_MISMATCH, f"SHA-256 {sha256[:16]}... is not the recorded {record.sha256[:16]}... (verified {when}): the bytes changed"
    if published is None:
        return None
    if sha256 != published.sha256:
        kept = record is not None and bool(record.extra.get("differs_from_published"))
        why = "kept with --accept-unpublished" if kept else "damaged, or re-released upstream"
        return (Status.DIFFERS_FROM_PUBLISHED,
                f"SHA-256 {sha256[:16]}... is not the published {published.sha256[:16]}... (dandiset {published.dandiset}): readable, but not the archive's bytes ({why})")  # fmt: skip
    return Status.OK, f"equal to the published bytes (dandiset {published.dandiset})"


def _plain_md5(etag: str | None) -> str | None:
    """The MD5 an S3 ETag is, or None for a multipart ETag (``"<md5>-N"``) or another validator."""
    match = _PLAIN_MD5.fullmatch(etag.strip()) if etag else None
    return match.group(1).lower() if match else None


def _digest(path: Path, stop: threading.Event, meter: Meter, *, md5: bool) -> tuple[str, str | None]:
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
                raise Stopped
            sha.update(view[:n])
            if second is not None:
                second.update(view[:n])
            meter.add(n)
    return sha.hexdigest(), second.hexdigest() if second is not None else None
def _read_every_chunk(path: Path, stop: threading.Event, meter: Meter, size: int) -> Finding | None:
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


def _read_dataset(dataset: h5py.Dataset, stop: threading.Event, meter: Meter) -> int:
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
            raise Stopped
        end = min(start + step, shape[0])
        dataset[start:end]
        part = stored * end // shape[0] - counted
        meter.add(part)
        counted += part
    return counted


def _adopt(ctx: Context, target: Target, path: Path, before: os.stat_result, sha256: str, md5: str | None, sound: str = "sound") -> Finding:
    """Record the hashes of a sound file that had no record, unless it changed or got one meanwhile;
    the note starts with ``sound`` (what the file was found to be)."""
    try:
        if signature(path.stat()) != signature(before):
            return Status.OK, f"{sound}, but it changed while being read: its hashes are not recorded"
    except OSError:
        return Status.OK, f"{sound}, but it went away while being read: its hashes are not recorded"
    if ctx.records.get(target.relative) is not None:
        return Status.OK, f"{sound}; a record of it was written meanwhile"
    record = FileRecord(path=target.relative, size=before.st_size, sha256=sha256, md5=md5, verified_at=utc_now(),
                        verified_level=str(Level.DEEP), extra={"adopted": True})  # fmt: skip
    try:
        ctx.records.put(record)
    except (OSError, CacheError) as error:
        return Status.OK, f"{sound}, but its hashes could not be recorded: {error}"
    return Status.OK, f"{sound}; it had no record, its hashes are recorded now"



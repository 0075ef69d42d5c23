"""Carry out a plan: transfer each file, verify it, promote it, record it.

A file moves to its final path only by an atomic rename after it passed every check: its size
is the server's, its HDF5 superblock's end of file is its size, h5py opens it and its NWB
identifier is the session or probe id it should be (and its MD5 is the S3 ETag's, where that
is a plain MD5), and where the archive publishes the file, the SHA-256 computed while streaming
is the published one. A file that fails verification is fetched again from scratch, up to a
budget; a file that still fails is reported and the run goes on with the others. A file the
plan refused (its source announces other bytes than the published ones) is reported, not fetched.

With ``accept_unpublished`` a file whose bytes are not the published ones (a re-release
upstream) is kept, and its record says so (``extra["differs_from_published"]``), so ``verify``
reports it as ``differs-from-published``.

A file whose pieces came from several sources and whose SHA-256 is not the published one is
mended before anything else (:mod:`ecephys_dl.audit`): each source's bytes in turn are fetched
again from the others, and the source whose bytes were wrong is dropped for the run.
"""

from __future__ import annotations

import enum
import errno
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

from ecephys_dl import audit, partial
from ecephys_dl.errors import CacheError, EcephysDlError
from ecephys_dl.health import SourceStats
from ecephys_dl.integrity import OK, Problem, Verdict, check_nwb, check_size_and_superblock
from ecephys_dl.layout import CacheLayout
from ecephys_dl.plan import Action, PlannedFile
from ecephys_dl.published import PublishedFile
from ecephys_dl.records import FileRecord, RecordStore, utc_now
from ecephys_dl.transfer import (
    RemoteFile,
    Shared,
    SourceLink,
    SourceShare,
    TransferCancelled,
    TransferListener,
    TransferResult,
    TransferSettings,
    download,
)

__all__ = ["REFETCHES", "FetchListener", "FetchSummary", "FileOutcome", "FileStatus", "fetch_files", "published_verdict", "verify_part"]

# Fetching a file again from byte 0 after it failed verification, at most this often.
REFETCHES = 2


class FetchListener(TransferListener, Protocol):
    """Transfer events plus what happens around each file."""

    def skipped(self, name: str, reason: str) -> None: ...
    def verified(self, name: str, size: int) -> None: ...
    def failed(self, name: str, message: str, hint: str | None = None) -> None: ...


class FileStatus(enum.StrEnum):
    """How a file of a run ended."""

    FETCHED = "fetched"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class FileOutcome:
    """One file's end: its status, its size, the bytes fetched for it, and why it failed (with a hint)."""

    relative: str
    status: FileStatus
    size: int = 0
    fetched: int = 0
    message: str = ""
    hint: str | None = None
    sources: tuple[SourceShare, ...] = ()  # each source's bytes for the file, and drops


@dataclass
class FetchSummary:
    """Every file's outcome, in plan order, how long the run took, and how each source served."""

    outcomes: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0
    cancelled: bool = False
    sources: tuple[SourceStats, ...] = ()

    def count(self, status: FileStatus) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def bytes_fetched(self) -> int:
        return sum(o.fetched for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return not self.cancelled and all(o.status in (FileStatus.FETCHED, FileStatus.SKIPPED) for o in self.outcomes)

    def to_json(self) -> dict[str, object]:
        return {
            "fetched": self.count(FileStatus.FETCHED),
            "skipped": self.count(FileStatus.SKIPPED),
            "failed": self.count(FileStatus.FAILED),
            "cancelled": self.cancelled,
            "bytes_fetched": self.bytes_fetched,
            "seconds": round(self.seconds, 3),
            "mean_speed_bytes_per_second": round(self.bytes_fetched / self.seconds) if self.seconds > 0 else 0,
            "sources": [s.to_json() for s in self.sources],
            "files": [asdict(o) for o in self.outcomes],
        }


def verify_part(part: Path, planned: PlannedFile, result: TransferResult, *, accept_unpublished: bool = False) -> Verdict:
    """Every check a file must pass before it may take its final name (``accept_unpublished``:
    bytes other than the published ones pass, as long as the file is otherwise sound)."""
    target = planned.target
    verdict = check_size_and_superblock(part, target.size if target.size is not None else result.size)
    if not verdict.ok:
        return verdict
    if target.md5 is not None and not planned.mix and result.md5 != target.md5:  # a mixed file: its published SHA-256 judges
        return Verdict(Problem.HASH_MISMATCH, f"MD5 {result.md5} differs from the S3 ETag's {target.md5}")
    published = published_verdict(result.sha256, result.size, planned.published)
    if not published.ok and not accept_unpublished:
        return published
    return check_nwb(part, target.expected_id)


def published_verdict(sha256: str, size: int, published: PublishedFile | None) -> Verdict:
    """Whether bytes of this SHA-256 and size are the published file (OK where nothing is published)."""
    if published is None or published.is_bytes(size, sha256):
        return OK
    what = f"SHA-256 {sha256[:16]}..." if size == published.size else f"{size} bytes"
    shown = f"{published.sha256[:16]}..." if size == published.size else f"{published.size} bytes"
    return Verdict(Problem.DIFFERS_FROM_PUBLISHED, f"{what} is not the published {shown} (dandiset {published.dandiset}): not the archive's bytes")


def _promote(part: Path, final: Path) -> None:
    """Rename the verified partial into place and make the rename durable."""
    os.replace(part, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _failed(listener: FetchListener, name: str, relative: str, message: str, hint: str | None = None, fetched: int = 0) -> FileOutcome:
    listener.failed(name, message, hint)
    return FileOutcome(relative, FileStatus.FAILED, fetched=fetched, message=message, hint=hint)


def _fetch_one(planned: PlannedFile, cache: CacheLayout, records: RecordStore, shared: Shared,
               settings: TransferSettings, listener: FetchListener, accept_unpublished: bool) -> FileOutcome:  # fmt: skip
    relative = cache.relative(planned.final)
    name = planned.final.name
    if shared.cancelled:
        return FileOutcome(relative, FileStatus.CANCELLED)
    if planned.action is Action.SKIP:
        listener.skipped(name, planned.reason)
        return FileOutcome(relative, FileStatus.SKIPPED, planned.have)
    if planned.action is Action.REFUSE:
        return _failed(listener, name, relative, f"refused {name}: {planned.reason}",
                       "the file on disk, if any, is kept; --accept-unpublished fetches it anyway, recorded as differing from the published bytes")  # fmt: skip
    try:
        if planned.final.parent.is_symlink():
            raise CacheError(f"{planned.final.parent} is a symbolic link: nothing is written through it", hint="remove it, then run again")
        planned.final.parent.mkdir(parents=True, exist_ok=True)
    except CacheError as error:
        return _failed(listener, name, relative, error.message, error.hint)
    except OSError as error:
        return _failed(listener, name, relative, f"cannot make {planned.final.parent}: {error}")
    part = cache.part(planned.final)
    remote = _remote(planned, name)
    fetched = 0
    shares: list[SourceShare] = []
    for attempt in range(REFETCHES + 1):
        try:
            result = download(remote, part, shared=shared, settings=settings, listener=listener)
            fetched += result.fetched
            shares += result.shares
            verdict = verify_part(part, planned, result, accept_unpublished=accept_unpublished)
            if verdict.problem is Problem.DIFFERS_FROM_PUBLISHED and len(remote.links) > 1:
                mended = _audit(remote, part, planned, shared, settings, listener)
                for again in mended:
                    fetched += again.fetched
                    shares += again.shares
                if mended:
                    result = mended[-1]
                    verdict = verify_part(part, planned, result, accept_unpublished=accept_unpublished)
        except TransferCancelled:
            return FileOutcome(relative, FileStatus.CANCELLED, fetched=fetched, sources=_summed(shares))
        except EcephysDlError as error:
            message, hint = error.message, error.hint
            if isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC:
                message = f"no space left on the device writing {name}; its partial is kept for the next run ({error.message})"
            return replace(_failed(listener, name, relative, message, hint, fetched), sources=_summed(shares))
        if verdict.ok:
            differs = published_verdict(result.sha256, result.size, planned.published)
            try:
                if planned.final.is_symlink():
                    raise CacheError(f"{planned.final} is a symbolic link: it is not replaced", hint="remove it, then run again")
                _promote(part, planned.final)
                cache.sidecar(part).unlink(missing_ok=True)
                now = utc_now()
                records.put(FileRecord(path=relative, size=result.size, sha256=result.sha256, md5=result.md5, etag=result.etag,
                                       last_modified=result.last_modified, source_url=planned.target.url, fetched_at=now,
                                       verified_at=now, verified_level="fetch", extra=_published_extra(differs, planned.published)))  # fmt: skip
            except CacheError as error:
                return _failed(listener, name, relative, error.message, error.hint, fetched)
            except OSError as error:
                return _failed(listener, name, relative, str(error), None, fetched)
            listener.verified(name, result.size)
            if not differs.ok:
                return FileOutcome(relative, FileStatus.FETCHED, result.size, fetched, f"kept with --accept-unpublished: {differs.detail}",
                                   sources=_summed(shares))  # fmt: skip
            return FileOutcome(relative, FileStatus.FETCHED, result.size, fetched, sources=_summed(shares))
        # Bytes that do not verify are worth nothing to a resume: start again from byte 0.
        part.unlink(missing_ok=True)
        cache.sidecar(part).unlink(missing_ok=True)
        message = f"{name} failed verification ({verdict.problem}: {verdict.detail})"
        if attempt < REFETCHES:
            listener.restarted(name, message + "; fetching it again")
        elif verdict.problem is Problem.DIFFERS_FROM_PUBLISHED:
            return _failed(listener, name, relative, f"{message}, {REFETCHES + 1} times: the source serves other bytes than the published ones",
                           "nothing was put in place; try another --source, or keep such a file with --accept-unpublished", fetched)  # fmt: skip
        else:
            return _failed(listener, name, relative, message, None, fetched)
    raise AssertionError("unreachable")


def _remote(planned: PlannedFile, name: str) -> RemoteFile:
    """The file as the engine fetches it: every kept source's link, mixed where the plan allows."""
    target = planned.target
    links = tuple(SourceLink(m.source, m.url, m.etag) for m in target.mirrors)
    # A mixed file's published SHA-256 judges it whole: an S3 ETag's MD5 adds nothing.
    md5 = target.md5 is not None and not planned.mix
    return RemoteFile(url=target.url, size=target.size, etag=target.etag, name=name, md5=md5, sources=links, mix=planned.mix)


def _audit(remote: RemoteFile, part: Path, planned: PlannedFile, shared: Shared, settings: TransferSettings,
           listener: FetchListener) -> list[TransferResult]:  # fmt: skip
    """The file is not the published bytes: take each source's bytes out in turn and fetch them
    again from the others, until it is (that source is dropped for the run) or none is left.
    The results of the fetches made; the last one is the part as it is now."""
    name, side = remote.label, partial.sidecar_path(part)
    record, _ = partial.read_record(side)
    if record is None:
        return []
    order = [link.source for link in remote.links]
    done: list[TransferResult] = []
    for suspect in audit.suspects(record.origins, order):
        others = tuple(link for link in remote.links if link.source != suspect and shared.health.dropped(link.source) is None)
        current, _ = partial.read_record(side)
        if not others or current is None:
            continue
        partial.write_record(side, audit.without(current, suspect))
        listener.note(name, f"{name} is not the published bytes: the bytes from {suspect} are fetched again from {', '.join(o.source for o in others)}")
        again = download(replace(remote, url=others[0].url, sources=others, mix=True), part, shared=shared, settings=settings, listener=listener)
        done.append(again)
        if published_verdict(again.sha256, again.size, planned.published).ok:
            shared.health.drop(suspect, "served other bytes than the published ones")
            listener.note(name, f"source {suspect} dropped for the run: it served other bytes than the published ones")
            done[-1] = replace(again, shares=(*again.shares, SourceShare(suspect, 0, "served other bytes than the published ones")))
            break
    return done


def _summed(shares: Sequence[SourceShare]) -> tuple[SourceShare, ...]:
    """Each source's bytes over every fetch of the file, in the order first seen, with its last drop reason."""
    total: dict[str, int] = {}
    dropped: dict[str, str | None] = {}
    for share in shares:
        total[share.source] = total.get(share.source, 0) + share.bytes
        if share.dropped is not None or share.source not in dropped:
            dropped[share.source] = share.dropped
    return tuple(SourceShare(source, count, dropped[source]) for source, count in total.items())


def _published_extra(differs: Verdict, published: PublishedFile | None) -> dict[str, object]:
    """What a record says of the published file: nothing where none is published, else the
    reference and, for a file kept with ``--accept-unpublished``, that it differs."""
    if published is None:
        return {}
    extra: dict[str, object] = {"published": published.reference}
    if not differs.ok:
        extra["differs_from_published"] = True
    return extra


def fetch_files(
    planned: Sequence[PlannedFile],
    cache: CacheLayout,
    *,
    shared: Shared,
    settings: TransferSettings,
    listener: FetchListener,
    jobs: int = 4,
    accept_unpublished: bool = False,
) -> FetchSummary:
    """Transfer, verify, promote and record every planned file, ``jobs`` files at a time."""
    records = RecordStore(cache)
    summary = FetchSummary()
    started = time.monotonic()
    order = {p.final: i for i, p in enumerate(planned)}
    results: dict[Path, FileOutcome] = {}
    if any(p.action not in (Action.SKIP, Action.REFUSE) for p in planned):
        # The first verification needs h5py: import it while the first bytes are on their way.
        threading.Thread(target=_import_h5py, name="import h5py", daemon=True).start()
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="fetch") as pool:
        futures = {pool.submit(_fetch_one, p, cache, records, shared, settings, listener, accept_unpublished): p for p in planned}
        for future in as_completed(futures):
            results[futures[future].final] = future.result()
    summary.outcomes = [results[p.final] for p in sorted(planned, key=lambda p: order[p.final])]
    summary.cancelled = shared.cancelled or any(o.status is FileStatus.CANCELLED for o in summary.outcomes)
    summary.sources = shared.health.report()
    summary.seconds = time.monotonic() - started
    return summary


def _import_h5py() -> None:
    try:
        import h5py  # noqa: F401
    except ImportError:  # reported where the verification needs it
        pass

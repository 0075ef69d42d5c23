"""The transfer engine: one remote file into ``<final>.part``, segmented, resumable, checked byte by byte.

Bytes go only to the part file the caller names; beside it a small JSON record,
``<final>.part.json`` (:mod:`ecephys_dl.partial`), says which version of the file the part holds
(URL, size, ETag, Last-Modified) and which byte ranges of it are on disk, in two tiers. Every
``record_seconds`` (a twentieth of a second) the record lists the ranges *written* so far, with
the machine's boot id: a killed process loses nothing the kernel already has, so a rerun on the
same boot keeps them. Every ``sync_seconds`` or ``sync_bytes`` the part is ``fdatasync``-ed and
the ranges written before the sync began become *synced*: only those count after a power loss
or a reboot (another boot id). The record is replaced atomically (and fsynced with each sync),
so after a crash, a SIGKILL or a power loss it never claims a byte that is not there.

A download (:func:`download`) goes like this:

1. A part with a record that parses and fits the file is resumed; anything else found on disk
   (a part without a record, a corrupt record, another version) is discarded, never guessed at.
2. The first request asks for the first missing range with ``Range`` and ``If-Range`` (a strong
   ETag, else the Last-Modified date). A 206 is accepted only if its ``Content-Range`` starts
   exactly where asked, ends no later than asked and gives the expected total; its bytes are
   written at their offsets and never past the end asked for.
3. Once the server has shown it honours ranges, the missing bytes are cut into pieces of at
   most ``segment_size`` (8 MiB), handed to up to ``connections`` parallel connections in file
   order, each piece one ranged request on a kept-alive connection. The file so fills from the
   front; a connection that runs out of work takes the second half of the piece with the most
   bytes left, so the tail of a file is never one slow connection.
4. A 200 to a ranged request means the file changed (a new validator: discard and start over)
   or the server ignores ranges (same validator: one stream from byte 0). A 416 is checked
   against a HEAD. A body that is not the file (HTML, an encoded body, a wrong length, a wrong
   ``Content-Range``) fails its attempt before anything of it is written.
5. Transport errors, 408/429/5xx, stalls and such bodies are retried per range under the
   :class:`~ecephys_dl.retry.RetryPolicy` (``Retry-After`` honoured), each retry resuming from
   the bytes already written; an attempt that brought new bytes gives the range a fresh budget.
6. A thread of the transfer hashes the part (SHA-256; MD5 too when there is an MD5 to compare
   with, a plain S3 ETag) in order, reading back the prefix that is complete as it grows, so
   when the last byte arrives only the pieces then in flight are left to hash.

:class:`Shared` holds what all transfers of one run share: the HTTP client, a cap on open
connections, an optional total rate limit and the cancel switch. The engine never prints: it
reports through a :class:`TransferListener` and raises :class:`TransferError` (this file failed
for good; the partial is kept) or :class:`TransferCancelled` (the run is stopping).

This module is the entry point and the file-level side (resume, discard, restart); the engine's
parts, each with one job, are :mod:`~ecephys_dl.contract` (what goes in and comes out),
:mod:`~ecephys_dl.facts` (what is known of the file), :mod:`~ecephys_dl.answers` (the pure
judge of answers), :mod:`~ecephys_dl.pieces` (the pure piece scheduler),
:mod:`~ecephys_dl.checkpoint` (the record), :mod:`~ecephys_dl.slots` and
:mod:`~ecephys_dl.shared` (the run-wide limits), :mod:`~ecephys_dl.wire` (requests),
:mod:`~ecephys_dl.writer` (bodies into the part), :mod:`~ecephys_dl.session` (one pass),
:mod:`~ecephys_dl.worker` (one connection's requests), :mod:`~ecephys_dl.routing` (the file's
sources) and :mod:`~ecephys_dl.health` (how each source serves the run).

Nothing is trusted that need not be: the part and its record are written only in a real
directory, never through a symbolic link (the part is opened with ``O_NOFOLLOW``; a link at the
part, the record or the final path is a :class:`~ecephys_dl.errors.CacheError`); redirects are
followed only to the file's own host or to hosts the run allows (:attr:`Shared.allowed_hosts`);
and no file grows past a ceiling: twice the size known in advance (plus 64 MiB), and
``TransferSettings.max_size`` in any case, so an endless or oversized answer costs bounded disk.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path

from ecephys_dl import partial
from ecephys_dl.contract import Quiet, RemoteFile, SourceLink, SourceShare, TransferListener, TransferResult, TransferSettings
from ecephys_dl.errors import CacheError, TransferCancelled, TransferError
from ecephys_dl.facts import FileFacts, Validator
from ecephys_dl.partial import SIDECAR_FORMAT, Ranges, partial_bytes, partial_size, sidecar_path
from ecephys_dl.routing import Router
from ecephys_dl.session import Session, StartOver
from ecephys_dl.shared import Shared
from ecephys_dl.sizes import format_size

__all__ = [
    "SIDECAR_FORMAT",
    "RemoteFile",
    "Shared",
    "SourceLink",
    "SourceShare",
    "TransferCancelled",
    "TransferError",
    "TransferListener",
    "TransferResult",
    "TransferSettings",
    "download",
    "partial_bytes",
    "partial_size",
    "sidecar_path",
]

# A file may grow this much beyond twice its known size (a new release) before it is refused.
_GROWTH_SLACK = 64 * 1024 * 1024
_DEFAULT_SETTINGS = TransferSettings()


# -- one download ------------------------------------------------------------------------------------


def download(
    remote: RemoteFile,
    part: Path,
    *,
    shared: Shared,
    settings: TransferSettings = _DEFAULT_SETTINGS,
    listener: TransferListener | None = None,
) -> TransferResult:
    """Fetch ``remote`` into ``part`` (``<final>.part``), resuming what an earlier run left.

    Returns when the part holds the whole file, synced and hashed; raises :class:`TransferError`
    when the file failed for good and :class:`TransferCancelled` when ``shared`` was cancelled.
    Its threads are joined before it returns or raises.
    """
    return _Transfer(remote, Path(part), shared, settings, listener if listener is not None else Quiet()).run()


class _Transfer:
    """The file-level state of one download: what is known of the file, across restarts."""

    def __init__(
        self, remote: RemoteFile, part: Path, shared: Shared, settings: TransferSettings, listener: TransferListener
    ) -> None:
        self.remote = remote
        self.part = part
        self.side = sidecar_path(part)
        self.shared = shared
        self.settings = settings
        self.listener = listener
        self.name = remote.label
        cap = settings.max_size
        ceiling = cap if remote.size is None else min(cap, 2 * remote.size + _GROWTH_SLACK)
        self.facts = FileFacts(remote.size, Validator(remote.etag, None), ceiling)
        self.router = Router(remote.links, mix=remote.mix, health=shared.health, listener=self.listener, name=self.name)
        self.kept_origins: dict[str, Ranges] = {}
        self.restarts = 0
        self.resumed_from = 0
        self.announced = False  # listener.started was called
        self._lock = threading.Lock()

    def run(self) -> TransferResult:
        began = time.monotonic()
        self._check_place()
        kept = self._resume()
        single = False
        while True:
            session = Session(self, kept, single)
            try:
                session.run()
            except StartOver as restart:
                self._discard(restart.reason, counted=True)
                self.facts.replace(restart.size, restart.validator)
                single, kept = restart.single, ()
                continue
            except TransferError as error:
                # One source per file: the next one takes the file over from byte 0, if there is one.
                if self.router.mix or self.router.fail_over(error.message) is None:
                    raise
                self._discard(f"{error.message}; another source takes the file over", counted=False)
                self.facts.replace(self.remote.size, Validator(self.router.current.etag, None))
                single, kept = False, ()
                continue
            break
        try:
            sha256, md5 = session.digests()
        except OSError as error:
            raise CacheError(f"cannot read {self.part} back to hash it: {error.strerror or error}",
                             hint="check the cache directory's disk; run again to fetch the file anew") from error  # fmt: skip
        finally:
            session.close()
        facts = self.facts.now()
        assert facts.size is not None  # a finished session knows the size
        return TransferResult(
            part=self.part,
            size=facts.size,
            sha256=sha256,
            md5=md5,
            etag=facts.validator.etag,
            last_modified=facts.validator.last_modified,
            resumed_from=self.resumed_from,
            fetched=self.facts.fetched,
            restarts=self.restarts,
            seconds=time.monotonic() - began,
            shares=self.router.shares(),
        )

    def announce(self) -> None:
        """Tell the listener the transfer started, once."""
        with self._lock:
            if self.announced:
                return
            self.announced = True
        self.listener.started(self.name, self.facts.size, self.resumed_from)

    def fail(self, why: str, *, cause: BaseException | None = None, hint: str | None = None) -> TransferError:
        """The error for this file failing for good, saying what is kept (``hint``: what to do instead)."""
        if hint is None:
            record, _ = partial.read_record(self.side)
            kept = partial.total(record.trusted) if record is not None else 0
            hint = (
                f"run the command again later: the {format_size(kept)} already in {self.part.name} will be resumed"
                if kept
                else "run the command again later"
            )
        where = "its sources" if self.router.mix else self.router.current.url
        error = TransferError(f"could not download {self.name} ({where}): {why}", hint=hint)
        error.__cause__ = cause
        return error

    def too_large(self, size: int, url: str) -> TransferError:
        """The error for a size the server states far beyond what the file can be: nothing of it is fetched."""
        expected = f"the {self.remote.size} bytes expected" if self.remote.size is not None else "any file's size"
        return self.fail(
            f"the server ({url}) states a size of {size} bytes, far above {expected} "
            f"(at most {self.facts.ceiling} accepted): not this file"
        )

    def _check_place(self) -> None:
        """Refuse to write anywhere but in a real directory, and never through a symbolic link.

        The part's directory must be a directory, not a link to one elsewhere; the part, its
        record, the record's temporary name and the final name (the part's name without
        ``.part``) must not be links. Anything else in the way is reported, not replaced.
        """
        part = self.part
        places = [part, self.side, self.side.with_name(self.side.name + ".tmp")]
        if part.name.endswith(".part") and len(part.name) > len(".part"):
            places.append(part.with_name(part.name[: -len(".part")]))
        hint = "remove the link (or move the real directory into the cache); nothing was written through it"
        try:
            folder = os.lstat(part.parent)
        except OSError as error:
            raise CacheError(f"cannot use the directory of {part}: {error.strerror or error}") from error
        if stat.S_ISLNK(folder.st_mode) or not stat.S_ISDIR(folder.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(folder.st_mode) else "not a directory"
            raise CacheError(f"refusing to write {part.name}: its directory {part.parent} is {kind}", hint=hint)
        for place in places:
            try:
                info = os.lstat(place)
            except FileNotFoundError:
                continue
            except OSError as error:
                raise CacheError(f"cannot use {place}: {error.strerror or error}") from error
            if stat.S_ISLNK(info.st_mode):
                raise CacheError(f"refusing to write {part.name}: {place} is a symbolic link", hint=hint)
            if not stat.S_ISREG(info.st_mode):
                raise CacheError(f"refusing to write {part.name}: {place} is not a regular file", hint=hint)

    def _resume(self) -> Ranges:
        """The ranges an earlier run left that can be trusted; anything else on disk is discarded."""
        record, problem = partial.read_record(self.side)
        if not self.part.exists():
            with contextlib.suppress(FileNotFoundError):
                self.side.unlink()  # a record of nothing
            return ()
        remote = self.remote
        reason: str | None = problem
        if record is not None and self.router.mix:
            return self._resume_mixed(record)
        if record is not None:
            self.router.start_with(record.url)  # one source per file: the one the partial came from
            remote = replace(remote, url=self.router.current.url, etag=self.router.current.etag if remote.sources else remote.etag)
        if record is None:
            reason = reason or f"{self.part.name} has no record of which bytes are valid"
        else:
            same_file = record.url == remote.url or (
                remote.etag is not None and record.etag == remote.etag and record.size == remote.size
            )
            on_disk = self.part.stat().st_size
            if not same_file:
                reason = f"the partial came from another URL ({record.url})"
            elif remote.size is not None and record.size != remote.size:
                reason = f"the file is now {remote.size} bytes, the partial is of a {record.size}-byte file"
            elif remote.etag is not None and record.etag != remote.etag:
                reason = f"the file changed since the partial download (ETag {record.etag} is now {remote.etag})"
            elif record.trusted and record.etag is None and record.last_modified is None:
                reason = "the server gave no ETag or Last-Modified, so the partial cannot be checked"
            elif record.trusted and record.trusted[-1][1] > on_disk:
                reason = f"{self.part.name} is shorter than its record claims"
            elif record.size is not None and record.size > self.facts.ceiling:
                reason = f"its record states a size of {record.size} bytes, far above what the file can be"
        if reason is not None or record is None:
            self._discard(reason or "unusable partial", counted=False)
            return ()
        self.facts.replace(record.size, Validator(record.etag, record.last_modified))
        self.resumed_from = partial.total(record.trusted)
        return record.trusted

    def _resume_mixed(self, record: partial.Record) -> Ranges:
        """The ranges of a partial whose pieces may come from several sources: every source's bytes
        whose version is still that source's (the published SHA-256 judges the whole at the end)."""
        on_disk = self.part.stat().st_size
        if record.size != self.remote.size or (record.trusted and record.trusted[-1][1] > on_disk):
            self._discard(f"the partial is of a {record.size}-byte file, or shorter than its record claims", counted=False)
            return ()
        if record.origins:
            by_source = record.kept_origins()
        else:  # a partial from one source
            source = next((link.source for link in self.router.links if link.url == record.url), None)
            by_source = {source: record.trusted} if source is not None and record.trusted else {}
            record = replace(record, origins=tuple(partial.Origin(s, record.url, record.etag, record.last_modified, r) for s, r in by_source.items()))
        kept: dict[str, Ranges] = {}
        listed = {link.source: link.etag for link in self.router.links}
        for origin in record.origins:
            ranges = by_source.get(origin.source)
            if not ranges:
                continue
            if origin.source not in listed:
                self.listener.note(self.name, f"the bytes from {origin.source} are fetched again: this run does not use that source")
                continue
            etag = listed[origin.source]
            if etag is not None and origin.etag is not None and etag != origin.etag:
                self.listener.note(self.name, f"the bytes from {origin.source} are of another version (ETag {origin.etag}, now {etag}): fetched again")
                continue
            kept[origin.source] = ranges
        self.kept_origins = kept
        ranges = partial.merge(r for rs in kept.values() for r in rs)
        self.resumed_from = partial.total(ranges)
        if not ranges:
            self._discard("nothing of the partial can be kept", counted=False)
        return ranges

    def _discard(self, reason: str, *, counted: bool) -> None:
        """Drop the partial: the record first, so a part is never paired with a wrong record."""
        self.restarts += 1
        if counted and self.restarts > self.settings.max_restarts:
            raise self.fail(f"gave up after discarding the partial {self.restarts - 1} times; last: {reason}")
        with contextlib.suppress(FileNotFoundError):
            self.side.unlink()
        with contextlib.suppress(FileNotFoundError):
            # O_NOFOLLOW: truncating through a link would destroy whatever it points to.
            fd = os.open(self.part, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
        self.resumed_from = 0
        self.listener.restarted(self.name, reason)

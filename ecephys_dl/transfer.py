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
   :class:`~ecephys_dl.http.RetryPolicy` (``Retry-After`` honoured), each retry resuming from
   the bytes already written; an attempt that brought new bytes gives the range a fresh budget.
6. A thread of the transfer hashes the part (SHA-256; MD5 too when there is an MD5 to compare
   with, a plain S3 ETag) in order, reading back the prefix that is complete as it grows, so
   when the last byte arrives only the pieces then in flight are left to hash.

:class:`Shared` holds what all transfers of one run share: the HTTP client, a cap on open
connections, an optional total rate limit and the cancel switch. The engine never prints: it
reports through a :class:`TransferListener` and raises :class:`TransferError` (this file failed
for good; the partial is kept) or :class:`TransferCancelled` (the run is stopping).

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
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Protocol

import httpx

from ecephys_dl import partial
from ecephys_dl.answers import Accept, Asked, Check, Head, HttpError, Plain, Restart, Retry, Single, TooLarge, judge_head, judge_plain, judge_range
from ecephys_dl.checkpoint import Checkpointer
from ecephys_dl.errors import CacheError, EcephysDlError, SourceError, SourceUnreachable, TransferCancelled, TransferError, UsageError
from ecephys_dl.facts import FileFacts, Validator
from ecephys_dl.http import (
    TLS_HINT,
    RetryNotice,
    RetryPolicy,
    TransientError,
    describe,
    is_transient,
    raise_for_status,
    retrying,
    send_following,
    tls_refused,
)
from ecephys_dl.partial import SIDECAR_FORMAT, Ranges, partial_bytes, partial_size, sidecar_path
from ecephys_dl.pieces import Pieces, Segment
from ecephys_dl.shared import Shared
from ecephys_dl.sizes import format_size

__all__ = [
    "SIDECAR_FORMAT",
    "RemoteFile",
    "Shared",
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



# -- facts in, facts out ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """The file to fetch: its URL and what is known of it in advance (from an S3 listing)."""

    url: str
    size: int | None = None  # None: learnt from the server
    etag: str | None = None  # a validator known in advance, else learnt from the server
    name: str = ""  # for messages and events, e.g. "session_715093703.nwb"
    # Compute the file's MD5 too (costs about twice SHA-256's CPU): only when there is an MD5 to
    # compare it with, such as a plain (not multipart) S3 ETag.
    md5: bool = False

    @property
    def label(self) -> str:
        """The name used in messages: ``name``, else the last part of the URL."""
        return self.name or self.url.rstrip("/").rsplit("/", 1)[-1] or self.url


@dataclass(frozen=True)
class TransferSettings:
    """How one file is fetched: connections, segment and chunk sizes, stall rules, checkpoints."""

    connections: int = 4  # ranged connections per file
    # The missing bytes are handed to the connections in order, in pieces of at most this size:
    # the file fills from the front, so its hash follows close behind the downloads, and only
    # ``connections`` pieces are ever in flight.
    segment_size: int = 8 * 1024 * 1024
    min_segment: int = 256 * 1024  # an idle connection takes half of a slow piece down to this
    chunk_size: int = 256 * 1024  # bytes gathered before one write
    stall_timeout: float = 60.0  # no byte for this long on a connection: drop it, resume its range
    min_speed: int = 0  # bytes/s; slower than this over stall_window: drop, resume (0 = off)
    stall_window: float = 60.0
    # The record says which bytes were written this often (a rename, no sync), so a process that
    # is killed loses at most this long's worth; the bytes written are synced to the disk (what
    # survives a power loss) every sync_seconds or sync_bytes, whichever comes first.
    record_seconds: float = 0.05
    sync_seconds: float = 2.0
    sync_bytes: int = 64 * 1024 * 1024
    max_restarts: int = 3  # discarding the partial during a transfer at most this often
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # No file is larger (the dataset's largest is about 3 GiB): the bound on an answer whose
    # length is unknown, such as an endless body.
    max_size: int = 64 * 1024**3

    def __post_init__(self) -> None:
        for name in ("connections", "segment_size", "min_segment", "chunk_size", "sync_bytes", "max_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"transfer {name.replace('_', ' ')} must be a whole number >= 1, not {value!r}")
        for name in ("min_speed", "max_restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"transfer {name.replace('_', ' ')} must be a whole number >= 0, not {value!r}")
        for name in ("stall_timeout", "stall_window", "record_seconds", "sync_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UsageError(f"transfer {name.replace('_', ' ')} must be a number of seconds > 0, not {value!r}")


@dataclass(frozen=True)
class TransferResult:
    """A complete part file and what is known of it; the caller verifies and moves it into place."""

    part: Path
    size: int
    sha256: str
    md5: str | None  # only when RemoteFile.md5 asked for it
    etag: str | None  # the validators of the version downloaded (may differ from RemoteFile.etag)
    last_modified: str | None
    resumed_from: int  # bytes of an earlier run's partial that the file kept
    fetched: int  # body bytes written in this call (restarted attempts included)
    restarts: int  # how often a partial was discarded in this call
    seconds: float


class TransferListener(Protocol):
    """Hears how transfers go; called from worker threads, so it must be thread-safe and cheap."""

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        """The first answer was accepted: the size is known (if the server says it)."""

    def advanced(self, name: str, nbytes: int) -> None:
        """``nbytes`` more bytes were written."""

    def retried(self, name: str, notice: RetryNotice) -> None:
        """An attempt failed and is retried (resuming from the bytes written)."""

    def restarted(self, name: str, reason: str) -> None:
        """The partial was discarded: progress starts again from 0."""

    def note(self, name: str, message: str) -> None:
        """Something worth telling (e.g. "the server ignores byte ranges: one stream")."""


class _Quiet:
    """The listener used when none is given."""

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        pass

    def advanced(self, name: str, nbytes: int) -> None:
        pass

    def retried(self, name: str, notice: RetryNotice) -> None:
        pass

    def restarted(self, name: str, reason: str) -> None:
        pass

    def note(self, name: str, message: str) -> None:
        pass


# -- control flow between the threads of a transfer -----------------------------------------------


class _Stopped(Exception):
    """A worker was told to stop (cancel, or another worker's failure): leave at a clean point."""


class _Restart(Exception):
    """The partial must go: the file changed, or ranges cannot be used. Carries the new facts."""

    def __init__(self, reason: str, *, size: int | None, validator: Validator, single: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.size = size
        self.validator = validator
        self.single = single


# -- one download ------------------------------------------------------------------------------------


def download(
    remote: RemoteFile,
    part: Path,
    *,
    shared: Shared,
    settings: TransferSettings = TransferSettings(),
    listener: TransferListener | None = None,
) -> TransferResult:
    """Fetch ``remote`` into ``part`` (``<final>.part``), resuming what an earlier run left.

    Returns when the part holds the whole file, synced and hashed; raises :class:`TransferError`
    when the file failed for good and :class:`TransferCancelled` when ``shared`` was cancelled.
    Its threads are joined before it returns or raises.
    """
    return _Transfer(remote, Path(part), shared, settings, listener if listener is not None else _Quiet()).run()


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
            session = _Session(self, kept, single)
            try:
                session.run()
            except _Restart as restart:
                self._discard(restart.reason, counted=True)
                self.facts.replace(restart.size, restart.validator)
                single, kept = restart.single, ()
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
        error = TransferError(f"could not download {self.name} ({self.remote.url}): {why}", hint=hint)
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


class _Session:
    """One pass at the file from a given partial: the part open, the worker threads, the record."""

    def __init__(self, transfer: _Transfer, kept: Ranges, single: bool) -> None:
        self.t = transfer
        self.shared = transfer.shared
        self.settings = transfer.settings
        self.kept = kept
        self.single = single
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.established = threading.Event()  # the first answer was accepted, or the probe gave up
        settings = self.settings
        self.pieces = Pieces(connections=settings.connections, segment_size=settings.segment_size, min_segment=settings.min_segment)
        self.checkpointer = Checkpointer(transfer.side, transfer.remote.url, transfer.facts, self.pieces, kept, self.lock,
                                         record_seconds=settings.record_seconds, sync_seconds=settings.sync_seconds,
                                         sync_bytes=settings.sync_bytes)  # fmt: skip
        self.checkpoint = self.checkpointer.checkpoint
        self.responses: set[httpx.Response] = set()
        self.failure: BaseException | None = None
        self.threads: list[threading.Thread] = []
        self.fd = -1
        self.fetched = 0  # body bytes written in this session
        self.hasher: partial.Hasher | None = None
        base = self.shared.client.timeout
        stall = self.settings.stall_timeout
        self.timeout = httpx.Timeout(connect=base.connect, read=stall, write=stall, pool=base.pool)

    # -- the coordinator --------------------------------------------------------------------------

    def run(self) -> None:
        """Fetch every missing byte; raise :class:`_Restart`, TransferError or TransferCancelled."""
        t = self.t
        self.shared.register(self)
        try:
            try:
                self.fd = os.open(t.part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
                if self.shared.cancelled:
                    self.stop.set()
                size = t.facts.size
                if size is not None and os.fstat(self.fd).st_size > size:
                    os.ftruncate(self.fd, size)  # bytes past the end are not the file's
                self.checkpointer.start(self.fd, t.name, self.fail)
                self.hasher = partial.Hasher(t.part, self._prefix, md5=t.remote.md5)
                self._schedule()
            except BaseException as error:
                self.fail(error)
            self._join()
            self.checkpointer.stop()
            if self.fd >= 0:
                try:
                    self.checkpoint(sync=True)
                except OSError as error:
                    self.fail(error)
        finally:
            t.facts.add_fetched(self.fetched)
            self.shared.unregister(self)
            if self.fd >= 0:
                os.close(self.fd)
        try:
            self._conclude()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the hash thread (after :meth:`digests`, or when the session failed)."""
        if self.hasher is not None:
            self.hasher.close()

    def _prefix(self) -> int:
        """Up to where the part holds the file from byte 0, in order (what may be hashed)."""
        with self.lock:
            return self.pieces.prefix(self.t.facts.size, self.kept)

    def _join(self) -> None:
        """Wait for every worker; an interruption meanwhile stops them, and the wait goes on."""
        while True:
            try:
                for thread in self.threads:
                    thread.join()
                return
            except BaseException as error:  # e.g. KeyboardInterrupt: no thread may outlive the call
                self.fail(error)

    def _schedule(self) -> None:
        """Start the first connection; once its answer is accepted, the others."""
        t = self.t
        size = t.facts.size
        if self.single or size == 0:
            self.single = True
            with self.lock:
                self.pieces.begin(None)  # its end comes with the answer
                whole = self.pieces.take()
            assert whole is not None
            self._spawn(whole, probe=True)
            return
        holes = partial.missing(self.kept, size) if size is not None else None
        with self.lock:
            self.pieces.begin(holes)  # with the size unknown, one range: its end comes with the answer
        if holes == []:
            self._confirm()
            return
        if size is not None:
            self._spread()  # so the first request asks for exactly its share
        with self.lock:
            probe = self.pieces.take()
        assert probe is not None
        self._spawn(probe, probe=True)
        # The first answer tells whether ranges work (and the size, if unknown): until then,
        # one connection, so a server ignoring ranges is not sent the whole file several times.
        self.established.wait()
        if self.stop.is_set() or self.single:
            return
        with self.lock:
            jobs = [self.pieces.take() for _ in range(min(len(self.pieces.pending), self.settings.connections - 1))]
        for job in filter(None, jobs):
            self._spawn(job, probe=False)

    def _spawn(self, segment: Segment, *, probe: bool) -> None:
        thread = threading.Thread(
            target=self._work, args=(segment, probe), name=f"transfer {self.t.name} #{len(self.threads)}", daemon=True
        )
        self.threads.append(thread)
        thread.start()

    def _spread(self) -> None:
        """Cut the missing bytes into pieces for the connections (:meth:`Pieces.cut_up`)."""
        with self.lock:
            self.pieces.cut_up()

    def _next_job(self) -> Segment | None:
        """A range for a connection that ran out of work: one waiting, or half of the fullest."""
        with self.lock:
            if self.stop.is_set():
                return None
            piece = self.pieces.take()
            if piece is not None:
                return piece
            if self.single:
                return None
            piece = self.pieces.steal()
            if piece is None:
                return None
            last = (piece.end or 0) - 1
        self.t.listener.note(self.t.name, f"split a slow range: bytes {piece.start}-{last} go to another connection")
        return piece

    def _confirm(self) -> None:
        """Every byte is on disk already: make sure it is still the server's version."""
        t = self.t
        facts = t.facts.now()
        if t.remote.etag is not None and facts.validator.etag == t.remote.etag:
            t.announce()
            return  # the listing just said so
        size, theirs = self._head()
        if size == facts.size and facts.validator.differs(theirs) is False:
            t.announce()
            return
        raise _Restart(
            f"the file changed on the server since the partial download ({size} bytes now)",
            size=size,
            validator=theirs,
        )

    def _conclude(self) -> None:
        """Turn the outcome of the threads into the session's result or exception."""
        t = self.t
        failure = self.failure
        known = t.facts.size
        done = known is not None and self.pieces.done
        if done and (failure is None or isinstance(failure, _Stopped)):
            return
        if self.shared.cancelled:
            record, _ = partial.read_record(t.side)
            kept = partial.total(record.trusted) if record is not None else 0
            size = format_size(known) if known is not None else "an unknown size"
            raise TransferCancelled(
                f"the download of {t.name} was stopped; {format_size(kept)} of {size} are kept in {t.part}",
                hint="run the command again to resume it",
            )
        if isinstance(failure, _Restart):
            raise failure
        if isinstance(failure, EcephysDlError):
            raise failure
        if isinstance(failure, OSError):
            raise CacheError(
                f"cannot write {t.part}: {failure.strerror or failure}",
                hint="check the free space and permissions of the cache directory",
            ) from failure
        if failure is not None:
            raise failure
        missing = self.pieces.missing
        raise t.fail(f"the transfer ended with {missing} bytes missing")

    # -- stopping -----------------------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """Record the first real failure and stop every worker."""
        with self.lock:
            if self.failure is None or (isinstance(self.failure, _Stopped) and not isinstance(error, _Stopped)):
                self.failure = error
        self.abort()

    def abort(self) -> None:
        """Stop every worker now: set the switch and cut the open connections under their reads."""
        self.stop.set()
        self.established.set()
        with self.lock:
            responses = list(self.responses)
        for response in responses:
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                # shutdown, unlike close, wakes a thread blocked in recv on this socket.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.shared.slots.wake()

    def check(self) -> None:
        if self.stop.is_set() or self.shared.cancelled:
            self.stop.set()
            raise _Stopped

    def pause(self, seconds: float) -> None:
        """Wait (a retry's backoff, the rate limit), waking early when told to stop."""
        if seconds > 0:
            if self.shared.sleep is time.sleep:
                self.stop.wait(seconds)
            else:
                self.shared.sleep(seconds)
        self.check()

    # -- a worker -----------------------------------------------------------------------------------

    def _work(self, segment: Segment, probe: bool) -> None:
        job: Segment | None = segment
        try:
            while job is not None:
                self._fetch(job)
                job = self._next_job()
        except BaseException as error:  # a worker's failure belongs to the coordinator
            self.fail(error)
        finally:
            if probe:
                self.established.set()

    def _fetch(self, segment: Segment) -> None:
        """Fill ``segment``, retrying per the policy; a retry resumes where the bytes stop."""
        t = self.t
        policy = self.settings.policy
        while not segment.finished:
            self.check()
            loop = retrying(
                policy,
                sleep=self.pause,
                on_retry=lambda notice: t.listener.retried(t.name, notice),
                url=t.remote.url,
                what=f"the download of {t.name}",
            )
            try:
                setback = loop(self._attempt, segment)
            except (TransferError, _Stopped, _Restart):
                raise
            except SourceUnreachable as error:
                raise t.fail(f"bytes {segment.pos}-{segment.end}: {error.message}", cause=error) from error
            except SourceError as error:
                raise t.fail(error.message, cause=error, hint=error.hint) from error
            except httpx.HTTPError as error:  # not transient: a bad URL, an unsupported scheme, TLS refused
                raise t.fail(describe(error), cause=error, hint=TLS_HINT if tls_refused(error) else None) from error
            if setback is not None:
                # New bytes came before the failure: a fresh budget, and the first backoff.
                after = setback.retry_after if isinstance(setback, TransientError) else None
                wait = policy.wait_for(1, after)
                reason = f"{describe(setback)}; resuming at byte {segment.pos}"
                t.listener.retried(t.name, RetryNotice(attempt=1, wait=wait, reason=reason))
                self.pause(wait)

    def _attempt(self, segment: Segment) -> BaseException | None:
        """Requests until ``segment`` is full (None), or a transient failure after new bytes (returned)."""
        high = segment.high
        try:
            while not segment.finished:
                self.check()
                if self.single:
                    self._stream_whole(segment)
                else:
                    self._request_range(segment)
            return None
        except (_Stopped, _Restart):
            raise
        except Exception as error:
            if self.stop.is_set() or self.shared.cancelled:
                raise _Stopped from error
            if is_transient(error) and segment.high > high:
                return error
            raise

    @contextlib.contextmanager
    def _open(self, method: str, headers: Mapping[str, str]) -> Iterator[httpx.Response]:
        """A streamed answer, holding one connection slot while it is open."""
        client = self.shared.client
        if not self.shared.slots.acquire(self.stop):
            raise _Stopped
        try:
            request = client.build_request(method, self.t.remote.url, headers=dict(headers), timeout=self.timeout)
            # Redirects are followed only to the file's own host or an allowed one, a few hops at most.
            response = send_following(client, request, allowed_hosts=self.shared.allowed_hosts)
            try:
                with self.lock:
                    self.responses.add(response)
                self.check()  # an abort may have run just before the answer was registered
                yield response
            finally:
                with self.lock:
                    self.responses.discard(response)
                response.close()
        finally:
            self.shared.slots.release()

    def _head(self) -> tuple[int | None, Validator]:
        """The server's length and validator for the file now (HEAD, retried)."""
        t = self.t

        def once() -> tuple[int | None, Validator]:
            with self._open("HEAD", {}) as response:
                verdict = judge_head(response.status_code, response.headers, t.facts.now())
                if not isinstance(verdict, Head):
                    self._refuse(response, verdict)
                return verdict.size, verdict.validator

        loop = retrying(
            self.settings.policy,
            sleep=self.pause,
            on_retry=lambda notice: t.listener.retried(t.name, notice),
            url=t.remote.url,
            what=f"the download of {t.name}",
        )
        try:
            result: tuple[int | None, Validator] = loop(once)
        except (_Stopped, TransferError):
            raise
        except SourceError as error:
            raise t.fail(error.message, cause=error, hint=error.hint) from error
        return result

    def _refuse(self, response: httpx.Response, verdict: Retry | HttpError | TooLarge) -> NoReturn:
        """Raise what a verdict against this answer means: a retry, an HTTP error, a file failing for good."""
        url = str(response.request.url)
        if isinstance(verdict, Retry):
            raise TransientError(verdict.reason, url=url)
        if isinstance(verdict, TooLarge):
            raise self.t.too_large(verdict.size, url)
        raise_for_status(response, what=f"the download of {self.t.name}")
        raise SourceError(f"the download of {self.t.name} ({url}) answered HTTP {verdict.status}")  # not reached: an error status

    def _request_range(self, segment: Segment) -> None:
        """One ranged request for the rest of ``segment``; its bytes written as they come."""
        t = self.t
        asked = Asked(segment.pos, segment.end)
        headers = {"Range": asked.header}
        validator = t.facts.validator.if_range()
        if validator is not None:
            headers["If-Range"] = validator
        with self._open("GET", headers) as response:
            verdict = judge_range(response.status_code, response.headers, asked, t.facts.now())
            if isinstance(verdict, Accept):
                with self.lock:
                    t.facts.learn(size=verdict.total, validator=verdict.validator)
                    if segment.end is None:
                        segment.end = verdict.total
                self._accepted()
                self._stream(response, segment, verdict.length)
            elif isinstance(verdict, Single):
                self._single(response, segment, verdict)
            elif isinstance(verdict, Restart):
                raise _Restart(verdict.reason, size=verdict.size, validator=verdict.validator, single=verdict.single)
            elif not isinstance(verdict, Check):
                self._refuse(response, verdict)
        if isinstance(verdict, Check):
            self._refused(segment)  # after the answer is closed: the HEAD needs a connection slot

    def _single(self, response: httpx.Response, segment: Segment, verdict: Single) -> None:
        """A server ignoring ranges: this answer is the one stream if nothing is to be kept, else start over."""
        t = self.t
        fresh = not self.kept and segment.start == 0 and segment.high == 0
        if fresh and not self.established.is_set():
            # Nothing to throw away and no other connection yet: this answer is the one stream.
            with self.lock:
                self.single = True
                size = t.facts.learn(size=verdict.length, validator=verdict.validator).size
                segment.end = size
                self.pieces.only(segment)
            t.listener.note(t.name, "the server ignores byte ranges: one stream")
            self._accepted()
            self._stream(response, segment, size)
            self._end_of_stream(segment)
            return
        restart = verdict.fallback
        raise _Restart(restart.reason, size=restart.size, validator=restart.validator, single=restart.single)

    def _refused(self, segment: Segment) -> None:
        """A 416: compare lengths (HEAD); done when nothing is missing, else start over."""
        t = self.t
        size, theirs = self._head()
        facts = t.facts.now()
        if size == facts.size and segment.finished and facts.validator.differs(theirs) is not True:
            return
        raise _Restart(
            f"the server refused the range from byte {segment.pos}: the file is {size} bytes now, not {facts.size}",
            size=size,
            validator=theirs,
        )

    def _stream_whole(self, segment: Segment) -> None:
        """One plain GET for the whole file, written from byte 0 (the server ignores ranges)."""
        t = self.t
        with self._open("GET", {}) as response:
            verdict = judge_plain(response.status_code, response.headers, t.facts.now())
            if not isinstance(verdict, Plain):
                self._refuse(response, verdict)
            if verdict.changed:
                t.listener.note(t.name, f"the file changed on the server (ETag {verdict.validator.etag}): taking the new version")
                t.facts.replace(verdict.length, verdict.validator)
            again = segment.high > 0
            with self.lock:
                size = t.facts.learn(size=verdict.length, validator=verdict.validator).size
                segment.pos = segment.reserved = 0
                segment.end = size
            if again:
                # The claims of the earlier attempt go before its bytes are overwritten.
                self.checkpoint(sync=True)
                if self.hasher is not None:
                    self.hasher.reset()
                t.listener.restarted(t.name, "the server ignores byte ranges: the stream starts again from byte 0")
            self._accepted()
            self._stream(response, segment, size)
            self._end_of_stream(segment)

    def _end_of_stream(self, segment: Segment) -> None:
        """A body of unannounced length ended cleanly: it was the whole file."""
        with self.lock:
            if segment.end is None:
                segment.end = segment.reserved = segment.pos
                self.t.facts.learn(size=segment.pos)

    def _accepted(self) -> None:
        """The first answer was accepted: spread the work (if the size was unknown), let the others start."""
        if not self.pieces.spread and not self.single:
            self._spread()  # before a byte is written, so the first connection stops at its share
        self.t.announce()
        self.established.set()

    def _stream(self, response: httpx.Response, segment: Segment, announced: int | None) -> None:
        """Write the body into ``segment`` from its ``pos``, never past its (movable) end.

        A body longer than ``announced`` is not the file: none of its bytes count (the segment
        goes back to where this answer began) and the attempt fails. A body of unknown length
        may not pass the file's ceiling. Bytes received before any other failure are written,
        so the retry resumes after them.
        """
        url = str(response.request.url)
        settings = self.settings
        clock = self.shared.clock
        buffer: list[bytes] = []  # the pieces of the next write, not joined: one pwritev
        buffered = 0
        received = 0
        throttled = 0.0
        samples: deque[tuple[float, int]] = deque([(clock(), 0)])
        bucket = self.shared.bucket
        begin = segment.pos
        bound = announced if announced is not None else self.t.facts.ceiling - begin
        try:
            for piece in response.iter_raw():
                self.check()
                received += len(piece)
                if received > bound:
                    buffer, buffered = [], 0  # the bytes of a body that is not the file are worth nothing
                    self._rollback(segment, begin)
                    if announced is None:
                        raise self.t.fail(f"the server sent more than {bound} bytes without a length: more than this file can be")
                    raise TransientError(f"sent more than the {announced} bytes announced: not the file", url=url)
                if bucket is not None:
                    wait = bucket.reserve(len(piece))
                    if wait > 0:
                        self.pause(wait)
                        throttled += wait
                buffer.append(piece)
                buffered += len(piece)
                if buffered >= settings.chunk_size:
                    data, buffer, size, buffered = buffer, [], buffered, 0
                    if self._write(segment, data, size) and (announced is None or received < announced):
                        return  # the range ends here (it was split): the rest is another's
                if settings.min_speed:
                    self._check_speed(samples, clock() - throttled, received, url)
        except BaseException:
            if buffer:
                data, buffer, size, buffered = buffer, [], buffered, 0
                self._write(segment, data, size)
            raise
        if buffer and self._write(segment, buffer, buffered):
            return
        if announced is not None and received < announced:
            raise TransientError(f"the body ended after {received} of {announced} bytes", url=url)

    def _rollback(self, segment: Segment, begin: int) -> None:
        """Forget what this answer wrote into ``segment``: its bytes are not trusted (the next checkpoint drops them)."""
        with self.lock:
            segment.pos = segment.reserved = max(segment.start, min(begin, segment.pos))
        if self.hasher is not None:
            self.hasher.reset()  # it may have hashed those bytes

    def _check_speed(self, samples: deque[tuple[float, int]], now: float, received: int, url: str) -> None:
        """Drop a connection slower than ``min_speed`` over ``stall_window`` (time spent throttled excluded)."""
        window = self.settings.stall_window
        samples.append((now, received))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()
        since, before = samples[0]
        if now - since >= window and (received - before) / (now - since) < self.settings.min_speed:
            raise TransientError(f"slower than {format_size(self.settings.min_speed)}/s over {window:g} s", url=url)

    def _write(self, segment: Segment, pieces: list[bytes], size: int) -> bool:
        """Write ``pieces`` (``size`` bytes) at ``segment.pos``, up to its end; True when the segment is full."""
        with self.lock:
            at = segment.pos
            room = size if segment.end is None else max(0, segment.end - at)
            count = min(size, room)
            segment.reserved = at + count
        if count:
            _pwrite_all(self.fd, pieces, count, at)
        checkpointer = self.checkpointer
        with self.lock:
            segment.pos = at + count
            segment.high = max(segment.high, segment.pos)
            self.fetched += count
            checkpointer.unsynced += count
            checkpointer.changes += 1
            finished = segment.finished
        if count:
            self.t.listener.advanced(self.t.name, count)
        return finished

    # -- the record and the hashes ------------------------------------------------------------------

    def digests(self) -> tuple[str, str | None]:
        """SHA-256 (and MD5, when asked for) of the finished part, from the hash thread."""
        t = self.t
        size = os.stat(t.part).st_size
        expected = t.facts.size
        if size != expected:
            raise t.fail(f"the part holds {size} bytes, not the {expected} expected")
        assert self.hasher is not None  # a session that finished started its hash thread
        return self.hasher.finish(size)  # the caller closes the session


def _pwrite_all(fd: int, pieces: list[bytes], count: int, at: int) -> None:
    """Write the first ``count`` bytes of ``pieces`` at offset ``at``: one pwritev when it can."""
    views: list[memoryview] = []
    left = count
    for piece in pieces:
        if left <= 0:
            break
        view = memoryview(piece)[:left]
        views.append(view)
        left -= len(view)
    if len(views) > 64:  # far below IOV_MAX; many tiny pieces are joined first
        views = [memoryview(b"".join(views))]
    done = os.pwritev(fd, views, at)
    if done < count:  # a short write (rare): the rest one call at a time
        rest = memoryview(b"".join(views))
        while done < count:
            done += os.pwrite(fd, rest[done:], at + done)

"""A session: one pass at a file from a given partial, its worker threads and how they end.

The coordinator opens the part, starts the record (:mod:`ecephys_dl.checkpoint`) and the hash,
sends one connection first and, once its answer shows what the server does, the others, each
taking pieces (:mod:`ecephys_dl.pieces`) until none is left; what a connection does with its
piece (the requests, their sources, retries and reroutes) is :mod:`ecephys_dl.worker`'s.
The pass ends complete, or raises :class:`StartOver` (the partial must go), a
:class:`~ecephys_dl.errors.TransferError` or a :class:`~ecephys_dl.errors.TransferCancelled`.
"""

from __future__ import annotations

import os
import threading

import httpx

from ecephys_dl import partial
from ecephys_dl.checkpoint import Checkpointer
from ecephys_dl.contract import FileTransfer
from ecephys_dl.errors import CacheError, EcephysDlError, TransferCancelled
from ecephys_dl.partial import Ranges
from ecephys_dl.pieces import Pieces, Segment
from ecephys_dl.sizes import format_size
from ecephys_dl.wire import Stopped, Wire
from ecephys_dl.worker import Requests, StartOver
from ecephys_dl.writer import PartWriter

__all__ = ["Session", "StartOver", "Stopped"]

class Session:
    """One pass at the file from a given partial: the part open, the worker threads, the record."""

    def __init__(self, transfer: FileTransfer, kept: Ranges, single: bool) -> None:
        self.t = transfer
        self.shared = transfer.shared
        self.settings = transfer.settings
        self.kept = kept
        self.single = single
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.established = threading.Event()  # the first answer was accepted, or the probe gave up
        settings = self.settings
        self.router = router = transfer.router
        self.pieces = Pieces(connections=settings.connections, segment_size=settings.segment_size, min_segment=settings.min_segment)
        url = transfer.remote.url if router.mix else router.current.url
        self.checkpointer = Checkpointer(transfer.side, url, transfer.facts, self.pieces, kept, self.lock,
                                         record_seconds=settings.record_seconds, sync_seconds=settings.sync_seconds,
                                         sync_bytes=settings.sync_bytes, router=router, kept_origins=transfer.kept_origins)  # fmt: skip
        self.checkpoint = self.checkpointer.checkpoint
        self.failure: BaseException | None = None
        self.threads: list[threading.Thread] = []
        self.hasher: partial.Hasher | None = None
        base = self.shared.client.timeout
        stall = settings.stall_timeout
        timeout = httpx.Timeout(connect=base.connect, read=stall, write=stall, pool=base.pool)
        self.wire = Wire(transfer, self.stop, timeout)
        self.check, self.pause = self.wire.check, self.wire.pause
        self.requests = Requests(self)
        self.writer = PartWriter(self.lock, self.checkpointer, settings, clock=self.shared.clock, bucket=self.shared.bucket,
                                 ceiling=transfer.facts.ceiling, listener=transfer.listener, name=transfer.name,
                                 check=self.check, pause=self.pause, fail=transfer.fail, rewound=self._rewound)  # fmt: skip

    # -- the coordinator --------------------------------------------------------------------------

    def run(self) -> None:
        """Fetch every missing byte; raise :class:`StartOver`, TransferError or TransferCancelled."""
        t = self.t
        self.shared.register(self)
        try:
            try:
                fd = self.writer.fd = self.checkpointer.fd = os.open(t.part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
                if self.shared.cancelled:
                    self.stop.set()
                size = t.facts.size
                if size is not None and os.fstat(fd).st_size > size:
                    os.ftruncate(fd, size)  # bytes past the end are not the file's
                self.checkpointer.start(t.name, self.fail)
                self.hasher = partial.Hasher(t.part, self._prefix, md5=t.remote.md5)
                self._schedule()
            except BaseException as error:
                self.fail(error)
            self._join()
            self.checkpointer.stop()
            if self.writer.fd >= 0:
                try:
                    self.checkpoint(sync=True)
                except OSError as error:
                    self.fail(error)
        finally:
            t.facts.add_fetched(self.writer.fetched)
            with self.lock:
                self.router.add_written(self.writer.by_source)
            self.shared.unregister(self)
            if self.writer.fd >= 0:
                os.close(self.writer.fd)
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
        # Mixed sources all serve the published size in ranges: a source that does not is dropped.
        if not self.router.mix:
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
        if self.router.mix:
            t.announce()
            return  # the published SHA-256 will say whether these are the file's bytes
        if t.remote.etag is not None and facts.validator.etag == t.remote.etag:
            t.announce()
            return  # the listing just said so
        size, theirs = self.wire.head()
        if size == facts.size and facts.validator.differs(theirs) is False:
            t.announce()
            return
        raise StartOver(
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
        if done and (failure is None or isinstance(failure, Stopped)):
            return
        if self.shared.cancelled:
            record, _ = partial.read_record(t.side)
            kept = partial.total(record.trusted) if record is not None else 0
            size = format_size(known) if known is not None else "an unknown size"
            raise TransferCancelled(
                f"the download of {t.name} was stopped; {format_size(kept)} of {size} are kept in {t.part}",
                hint="run the command again to resume it",
            )
        if isinstance(failure, StartOver):
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
            if self.failure is None or (isinstance(self.failure, Stopped) and not isinstance(error, Stopped)):
                self.failure = error
        self.abort()

    def abort(self) -> None:
        """Stop every worker now: set the switch and cut the open connections under their reads."""
        self.stop.set()
        self.established.set()
        self.wire.cut()

    # -- a worker -----------------------------------------------------------------------------------

    def _work(self, segment: Segment, probe: bool) -> None:
        job: Segment | None = segment
        try:
            while job is not None:
                self.requests.fetch(job)
                job = self._next_job()
        except BaseException as error:  # a worker's failure belongs to the coordinator
            self.fail(error)
        finally:
            if probe:
                self.established.set()

    def _accepted(self) -> None:
        """The first answer was accepted: spread the work (if the size was unknown), let the others start."""
        if not self.pieces.spread and not self.single:
            self._spread()  # before a byte is written, so the first connection stops at its share
        self.t.announce()
        self.established.set()

    def _rewound(self) -> None:
        """Bytes already written were taken back: the hash may have read them, and starts over."""
        if self.hasher is not None:
            self.hasher.reset()

    def digests(self) -> tuple[str, str | None]:
        """SHA-256 (and MD5, when asked for) of the finished part, from the hash thread."""
        t = self.t
        size = os.stat(t.part).st_size
        expected = t.facts.size
        if size != expected:
            raise t.fail(f"the part holds {size} bytes, not the {expected} expected")
        assert self.hasher is not None  # a session that finished started its hash thread
        return self.hasher.finish(size)  # the caller closes the session

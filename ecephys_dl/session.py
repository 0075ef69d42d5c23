"""A session: one pass at a file from a given partial, its worker threads and how they end.

The coordinator opens the part, starts the record (:mod:`ecephys_dl.checkpoint`) and the hash,
sends one connection first and, once its answer shows what the server does, the others, each
taking pieces (:mod:`ecephys_dl.pieces`) until none is left. A worker asks for its range
(:mod:`ecephys_dl.wire`), acts on what the judge (:mod:`ecephys_dl.answers`) makes of the answer
and lets the writer (:mod:`ecephys_dl.writer`) put its body in place, retrying per the policy.
The pass ends complete, or raises :class:`StartOver` (the partial must go), a
:class:`~ecephys_dl.errors.TransferError` or a :class:`~ecephys_dl.errors.TransferCancelled`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import httpx

from ecephys_dl import partial
from ecephys_dl.answers import Accept, Asked, Check, HttpError, Plain, Restart, Retry, Single, TooLarge, judge_plain, judge_range
from ecephys_dl.checkpoint import Checkpointer
from ecephys_dl.contract import FileTransfer, SourceLink
from ecephys_dl.errors import CacheError, EcephysDlError, SourceError, SourceUnreachable, TooSlow, TransferCancelled, TransferError, TransientError
from ecephys_dl.facts import Facts, Validator
from ecephys_dl.health import Failure
from ecephys_dl.partial import Ranges
from ecephys_dl.pieces import Pieces, Segment
from ecephys_dl.retry import TLS_HINT, TRANSIENT_STATUSES, RetryNotice, describe, is_transient, retrying, tls_refused
from ecephys_dl.sizes import format_size
from ecephys_dl.wire import Stopped, Wire
from ecephys_dl.writer import PartWriter

__all__ = ["Session", "SourceFault", "StartOver", "Stopped"]

# What a failed attempt returns when its range went to another source: go on at once, no backoff.
_REROUTED = object()


class StartOver(Exception):
    """The partial must go: the file changed, or ranges cannot be used. Carries the new facts."""

    def __init__(self, reason: str, *, size: int | None, validator: Validator, single: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.size = size
        self.validator = validator
        self.single = single


class SourceFault(Exception):
    """A source answered what no retry can mend (another size or version, ranges ignored, a 4xx): with mixed sources, it is dropped for the file."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(reason)
        self.source = source
        self.reason = reason


def _fault_of(verdict: Restart | Single | Check | HttpError | TooLarge) -> str:
    """What a verdict that drops a source says of its answer."""
    if isinstance(verdict, Restart):
        return verdict.reason
    if isinstance(verdict, Single):
        return "it ignores byte ranges"
    if isinstance(verdict, Check):
        return "it refused the range (HTTP 416)"
    if isinstance(verdict, TooLarge):
        return f"it states a size of {verdict.size} bytes"
    return f"it answered HTTP {verdict.status}"


def _stalled(error: BaseException) -> bool:
    """A connection that brought no byte for --stall-timeout, or too few for --min-speed."""
    return isinstance(error, (httpx.ReadTimeout, TooSlow))


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
            except (TransferError, Stopped, StartOver):
                raise
            except SourceFault as fault:
                raise t.fail(f"source {fault.source}: {fault.reason}", cause=fault) from fault
            except SourceUnreachable as error:
                raise t.fail(f"bytes {segment.pos}-{segment.end}: {error.message}", cause=error) from error
            except SourceError as error:
                raise t.fail(error.message, cause=error, hint=error.hint) from error
            except httpx.HTTPError as error:  # not transient: a bad URL, an unsupported scheme, TLS refused
                raise t.fail(describe(error), cause=error, hint=TLS_HINT if tls_refused(error) else None) from error
            if setback is _REROUTED:
                continue
            if isinstance(setback, BaseException):
                # New bytes came before the failure: a fresh budget, and the first backoff.
                after = setback.retry_after if isinstance(setback, TransientError) else None
                wait = policy.wait_for(1, after)
                reason = f"{describe(setback)}; resuming at byte {segment.pos}"
                t.listener.retried(t.name, RetryNotice(attempt=1, wait=wait, reason=reason))
                self.pause(wait)

    def _attempt(self, segment: Segment) -> object:
        """Requests until ``segment`` is full (None), or a transient failure after new bytes (returned),
        or :data:`_REROUTED` when the range goes on from another source."""
        high = segment.high
        try:
            while not segment.finished:
                self.check()
                if self.single:
                    self._stream_whole(segment)
                else:
                    self._request_range(segment)
            return None
        except (Stopped, StartOver):
            raise
        except SourceFault as fault:
            if self.stop.is_set() or self.shared.cancelled:
                raise Stopped from fault
            if self._reroute(segment, fault.source, Failure.WRONG, fault.reason):
                return _REROUTED
            raise
        except Exception as error:
            if self.stop.is_set() or self.shared.cancelled:
                raise Stopped from error
            if self.router.mix and is_transient(error) and segment.source is not None:
                how = Failure.STALL if _stalled(error) else Failure.ERROR
                if self._reroute(segment, segment.source, how, describe(error)):
                    return _REROUTED
            if is_transient(error) and segment.high > high:
                return error
            raise

    def _reroute(self, segment: Segment, source: str, how: Failure, reason: str) -> bool:
        """``source`` failed ``segment``: True when another source takes it on at once (never the one
        that just failed it); False when none can, and the retry policy goes on."""
        router = self.router
        dropped = router.failed(source, how, reason)
        others = [s for s in router.usable() if s != source]
        if not others:
            return False
        segment.avoid = frozenset({source})
        if not dropped:
            self.t.listener.note(self.t.name, f"source {source} failed bytes {segment.pos}-{(segment.end or 0) - 1} ({reason}): they go to another source")
        return True

    @contextlib.contextmanager
    def _source(self, segment: Segment) -> Iterator[SourceLink]:
        """A connection slot on the source ``segment``'s next request goes to (per :mod:`ecephys_dl.health`),
        the segment labelled with it; how the request went is measured."""
        link = self.router.acquire(segment.avoid, self.stop)
        if link is None:
            self.check()
            raise Stopped
        health, clock = self.shared.health, self.shared.clock
        with self.lock:
            self.pieces.relabel(segment, link.source)
            before = segment.pos
        began = clock()
        try:
            yield link
        finally:
            self.router.release(link.source)
            health.served(link.source, max(0, segment.pos - before), clock() - began)

    def _request_range(self, segment: Segment) -> None:
        """One ranged request for the rest of ``segment``; its bytes written as they come."""
        t = self.t
        router = self.router
        with self._source(segment) as link:
            facts = router.facts(link.source, t.facts)
            asked = Asked(segment.pos, segment.end)
            headers = {"Range": asked.header}
            validator = facts.validator.if_range()
            if validator is not None:
                headers["If-Range"] = validator
            verdict = self._ranged(segment, link, headers, asked, facts)
        if isinstance(verdict, Check):
            self._refused(segment)  # after the answer is closed: the HEAD needs a connection slot

    def _ranged(self, segment: Segment, link: SourceLink, headers: dict[str, str], asked: Asked, facts: Facts) -> object:
        """One ranged request to ``link``, judged; an accepted body written as it comes. Returns the verdict."""
        t = self.t
        router = self.router
        with self.wire.request("GET", headers, url=link.url) as response:
            verdict = judge_range(response.status_code, response.headers, asked, facts)
            if isinstance(verdict, Accept):
                with self.lock:
                    # Mixed sources: each keeps its validator; the file's facts keep the published size.
                    t.facts.learn(size=verdict.total, validator=None if router.mix else verdict.validator)
                    if segment.end is None:
                        segment.end = verdict.total
                router.learn(link.source, verdict.validator)
                self._accepted()
                self.writer.stream(response, segment, verdict.length)
            elif router.mix and not isinstance(verdict, Retry) and not (isinstance(verdict, HttpError) and verdict.status in TRANSIENT_STATUSES):
                raise SourceFault(link.source, _fault_of(verdict))
            elif isinstance(verdict, Single):
                self._single(response, segment, verdict)
            elif isinstance(verdict, Restart):
                raise StartOver(verdict.reason, size=verdict.size, validator=verdict.validator, single=verdict.single)
            elif not isinstance(verdict, Check):
                self.wire.refuse(response, verdict)
        return verdict

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
            self.writer.stream(response, segment, size)
            self._end_of_stream(segment)
            return
        restart = verdict.fallback
        raise StartOver(restart.reason, size=restart.size, validator=restart.validator, single=restart.single)

    def _refused(self, segment: Segment) -> None:
        """A 416: compare lengths (HEAD); done when nothing is missing, else start over."""
        t = self.t
        size, theirs = self.wire.head()
        facts = t.facts.now()
        if size == facts.size and segment.finished and facts.validator.differs(theirs) is not True:
            return
        raise StartOver(
            f"the server refused the range from byte {segment.pos}: the file is {size} bytes now, not {facts.size}",
            size=size,
            validator=theirs,
        )

    def _stream_whole(self, segment: Segment) -> None:
        """One plain GET for the whole file, written from byte 0 (the server ignores ranges)."""
        t = self.t
        with self._source(segment) as link, self.wire.request("GET", {}, url=link.url) as response:
            verdict = judge_plain(response.status_code, response.headers, t.facts.now())
            if not isinstance(verdict, Plain):
                self.wire.refuse(response, verdict)
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
            self.writer.stream(response, segment, size)
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

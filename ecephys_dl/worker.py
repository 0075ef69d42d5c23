"""A connection's work: fill a segment with ranged requests to the sources, retrying and rerouting.

:class:`Requests` does, for the workers of one :class:`~ecephys_dl.session.Session`, what one
connection does with a segment: pick the source of each request (:mod:`ecephys_dl.routing`),
ask for the range (:mod:`ecephys_dl.wire`), act on what the judge (:mod:`ecephys_dl.answers`)
makes of the answer, let the writer put the body in place, and on a failure retry per the
policy or, with mixed sources, hand the rest of the range to another source at once. A server
ignoring ranges gets one stream from byte 0; an answer showing the partial must go raises
:class:`StartOver`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx

from ecephys_dl.answers import Accept, Asked, Check, HttpError, Plain, Restart, Retry, Single, TooLarge, judge_plain, judge_range
from ecephys_dl.contract import SourceLink
from ecephys_dl.errors import SourceError, SourceUnreachable, TooSlow, TransferError, TransientError
from ecephys_dl.facts import Facts, Validator
from ecephys_dl.health import Failure
from ecephys_dl.pieces import Segment
from ecephys_dl.retry import TLS_HINT, TRANSIENT_STATUSES, RetryNotice, describe, is_transient, retrying, tls_refused
from ecephys_dl.wire import Stopped

if TYPE_CHECKING:
    from ecephys_dl.session import Session

__all__ = ["Requests", "SourceFault", "StartOver"]

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


class Requests:
    """The requests of one session's connections (each call is one connection's, on its thread)."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def fetch(self, segment: Segment) -> None:
        """Fill ``segment``, retrying per the policy; a retry resumes where the bytes stop."""
        t = self.s.t
        policy = self.s.settings.policy
        while not segment.finished:
            self.s.check()
            loop = retrying(
                policy,
                sleep=self.s.pause,
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
                self.s.pause(wait)

    def _attempt(self, segment: Segment) -> object:
        """Requests until ``segment`` is full (None), or a transient failure after new bytes (returned),
        or :data:`_REROUTED` when the range goes on from another source."""
        high = segment.high
        try:
            while not segment.finished:
                self.s.check()
                if self.s.single:
                    self._stream_whole(segment)
                else:
                    self._request_range(segment)
            return None
        except (Stopped, StartOver):
            raise
        except SourceFault as fault:
            if self.s.stop.is_set() or self.s.shared.cancelled:
                raise Stopped from fault
            if self._reroute(segment, fault.source, Failure.WRONG, fault.reason):
                return _REROUTED
            raise
        except Exception as error:
            if self.s.stop.is_set() or self.s.shared.cancelled:
                raise Stopped from error
            if self.s.router.mix and is_transient(error) and segment.source is not None:
                how = Failure.STALL if _stalled(error) else Failure.ERROR
                if self._reroute(segment, segment.source, how, describe(error)):
                    return _REROUTED
            if is_transient(error) and segment.high > high:
                return error
            raise

    def _reroute(self, segment: Segment, source: str, how: Failure, reason: str) -> bool:
        """``source`` failed ``segment``: True when another source takes it on at once (never the one
        that just failed it); False when none can, and the retry policy goes on."""
        router = self.s.router
        dropped = router.failed(source, how, reason)
        others = [s for s in router.usable() if s != source]
        if not others:
            return False
        segment.avoid = frozenset({source})
        if not dropped:
            self.s.t.listener.note(self.s.t.name, f"source {source} failed bytes {segment.pos}-{(segment.end or 0) - 1} ({reason}): they go to another source")
        return True

    @contextlib.contextmanager
    def _source(self, segment: Segment) -> Iterator[SourceLink]:
        """A connection slot on the source ``segment``'s next request goes to (per :mod:`ecephys_dl.health`),
        the segment labelled with it; how the request went is measured."""
        link = self.s.router.acquire(segment.avoid, self.s.stop)
        if link is None:
            self.s.check()
            raise Stopped
        health, clock = self.s.shared.health, self.s.shared.clock
        with self.s.lock:
            self.s.pieces.relabel(segment, link.source)
            before = segment.pos
        began = clock()
        try:
            yield link
        finally:
            self.s.router.release(link.source)
            health.served(link.source, max(0, segment.pos - before), clock() - began)

    def _request_range(self, segment: Segment) -> None:
        """One ranged request for the rest of ``segment``; its bytes written as they come."""
        t = self.s.t
        router = self.s.router
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
        t = self.s.t
        router = self.s.router
        with self.s.wire.request("GET", headers, url=link.url) as response:
            verdict = judge_range(response.status_code, response.headers, asked, facts)
            if isinstance(verdict, Accept):
                with self.s.lock:
                    # Mixed sources: each keeps its validator; the file's facts keep the published size.
                    t.facts.learn(size=verdict.total, validator=None if router.mix else verdict.validator)
                    if segment.end is None:
                        segment.end = verdict.total
                router.learn(link.source, verdict.validator)
                self.s._accepted()
                self.s.writer.stream(response, segment, verdict.length)
            elif router.mix and not isinstance(verdict, Retry) and not (isinstance(verdict, HttpError) and verdict.status in TRANSIENT_STATUSES):
                raise SourceFault(link.source, _fault_of(verdict))
            elif isinstance(verdict, Single):
                self._single(response, segment, verdict)
            elif isinstance(verdict, Restart):
                raise StartOver(verdict.reason, size=verdict.size, validator=verdict.validator, single=verdict.single)
            elif not isinstance(verdict, Check):
                self.s.wire.refuse(response, verdict)
        return verdict

    def _single(self, response: httpx.Response, segment: Segment, verdict: Single) -> None:
        """A server ignoring ranges: this answer is the one stream if nothing is to be kept, else start over."""
        t = self.s.t
        fresh = not self.s.kept and segment.start == 0 and segment.high == 0
        if fresh and not self.s.established.is_set():
            # Nothing to throw away and no other connection yet: this answer is the one stream.
            with self.s.lock:
                self.s.single = True
                size = t.facts.learn(size=verdict.length, validator=verdict.validator).size
                segment.end = size
                self.s.pieces.only(segment)
            t.listener.note(t.name, "the server ignores byte ranges: one stream")
            self.s._accepted()
            self.s.writer.stream(response, segment, size)
            self._end_of_stream(segment)
            return
        restart = verdict.fallback
        raise StartOver(restart.reason, size=restart.size, validator=restart.validator, single=restart.single)

    def _refused(self, segment: Segment) -> None:
        """A 416: compare lengths (HEAD); done when nothing is missing, else start over."""
        t = self.s.t
        size, theirs = self.s.wire.head()
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
        t = self.s.t
        with self._source(segment) as link, self.s.wire.request("GET", {}, url=link.url) as response:
            verdict = judge_plain(response.status_code, response.headers, t.facts.now())
            if not isinstance(verdict, Plain):
                self.s.wire.refuse(response, verdict)
            if verdict.changed:
                t.listener.note(t.name, f"the file changed on the server (ETag {verdict.validator.etag}): taking the new version")
                t.facts.replace(verdict.length, verdict.validator)
            again = segment.high > 0
            with self.s.lock:
                size = t.facts.learn(size=verdict.length, validator=verdict.validator).size
                segment.pos = segment.reserved = 0
                segment.end = size
            if again:
                # The claims of the earlier attempt go before its bytes are overwritten.
                self.s.checkpoint(sync=True)
                if self.s.hasher is not None:
                    self.s.hasher.reset()
                t.listener.restarted(t.name, "the server ignores byte ranges: the stream starts again from byte 0")
            self.s._accepted()
            self.s.writer.stream(response, segment, size)
            self._end_of_stream(segment)

    def _end_of_stream(self, segment: Segment) -> None:
        """A body of unannounced length ended cleanly: it was the whole file."""
        with self.s.lock:
            if segment.end is None:
                segment.end = segment.reserved = segment.pos
                self.s.t.facts.learn(size=segment.pos)

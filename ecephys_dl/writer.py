"""The part writer: the body of an answer into the part file, at its offsets, never past its segment.

Bytes are gathered into chunks of ``chunk_size`` and written with one ``pwritev`` each, at the
position of the segment they fill; a segment's end may move under the writer (a split), and
the write stops there. The writer holds the rate limit, drops a connection slower than
``min_speed``, refuses a body longer than announced (taking back what it wrote of it), and
counts what it wrote for the record. This is the engine's hot loop: per network read it does
only what it must.

A body of announced length over a plain HTTP/1.1 connection (TLS included) is read straight
from the socket into one preallocated buffer per answer (``recv_into``) and written from it, once
the HTTP parser has handed over the bytes it had already read: no copy per chunk in user space
beyond the kernel's. The parser is then told the body is done, so the connection is kept alive.
Anywhere this cannot be done safely (another transport, an encoded body, an unknown length)
the body is read through httpx as before.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from ecephys_dl.checkpoint import Checkpointer
from ecephys_dl.contract import TransferListener, TransferSettings
from ecephys_dl.errors import TooSlow, TransientError
from ecephys_dl.pieces import Segment
from ecephys_dl.sizes import format_size
from ecephys_dl.slots import TokenBucket

__all__ = ["PartWriter"]


class PartWriter:
    """Writes answers' bodies into the part open at :attr:`fd`, under the engine's ``lock``.

    ``check`` raises when the transfer is to stop, ``pause`` waits (the rate limit), ``fail``
    makes the error of a file failing for good, ``rewound`` is told when bytes already written
    are taken back (the hash must start over).
    """

    def __init__(
        self,
        lock: threading.Lock,
        checkpointer: Checkpointer,
        settings: TransferSettings,
        *,
        clock: Callable[[], float],
        bucket: TokenBucket | None,
        ceiling: int,
        listener: TransferListener,
        name: str,
        check: Callable[[], None],
        pause: Callable[[float], None],
        fail: Callable[[str], BaseException],
        rewound: Callable[[], None],
    ) -> None:
        self.lock = lock
        self.checkpointer = checkpointer
        self.settings = settings
        self.clock = clock
        self.bucket = bucket
        self.ceiling = ceiling
        self.listener = listener
        self.name = name
        self.check = check
        self.pause = pause
        self.fail = fail
        self.rewound = rewound
        self.fd = -1  # the part, once open
        self.fetched = 0  # body bytes written (under lock)
        self.by_source: dict[str, int] = {}  # of those, each source's (under lock)

    def stream(self, response: httpx.Response, segment: Segment, announced: int | None) -> None:
        """Write the body into ``segment`` from its ``pos``, never past its (movable) end.

        A body longer than ``announced`` is not the file: none of its bytes count (the segment
        goes back to where this answer began) and the attempt fails. A body of unknown length
        may not pass the file's ceiling. Bytes received before any other failure are written,
        so the retry resumes after them.
        """
        url = str(response.request.url)
        if announced is not None:
            raw = _raw_body(response)
            if raw is not None:
                self._stream_raw(response, raw, segment, announced, url)
                return
        settings = self.settings
        clock = self.clock
        buffer: list[bytes] = []  # the pieces of the next write, not joined: one pwritev
        buffered = 0
        received = 0
        throttled = 0.0
        samples: deque[tuple[float, int]] = deque([(clock(), 0)])
        bucket = self.bucket
        begin = segment.pos
        bound = announced if announced is not None else self.ceiling - begin
        try:
            for piece in response.iter_raw():
                self.check()
                received += len(piece)
                if received > bound:
                    buffer, buffered = [], 0  # the bytes of a body that is not the file are worth nothing
                    self.rollback(segment, begin)
                    if announced is None:
                        raise self.fail(f"the server sent more than {bound} bytes without a length: more than this file can be")
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
                    if self.write(segment, data, size) and (announced is None or received < announced):
                        return  # the range ends here (it was split): the rest is another's
                if settings.min_speed:
                    self._check_speed(samples, clock() - throttled, received, url)
        except BaseException:
            if buffer:
                data, buffer, size, buffered = buffer, [], buffered, 0
                self.write(segment, data, size)
            raise
        if buffer and self.write(segment, buffer, buffered):
            return
        if announced is not None and received < announced:
            raise TransientError(f"the body ended after {received} of {announced} bytes", url=url)

    def _stream_raw(self, response: httpx.Response, raw: _RawBody, segment: Segment, announced: int, url: str) -> None:
        """:meth:`stream` for a body of known length read straight from the socket (see the module's docstring)."""
        settings = self.settings
        clock = self.clock
        bucket = self.bucket
        pieces = response.iter_raw()
        first = next(pieces, b"")  # what the parser had already read: afterwards its buffer is empty
        if len(first) > announced:
            self.rollback(segment, segment.pos)
            raise TransientError(f"sent more than the {announced} bytes announced: not the file", url=url)
        received = len(first)
        throttled = 0.0
        if bucket is not None and first:
            wait = bucket.reserve(len(first))
            if wait > 0:
                self.pause(wait)
                throttled = wait
        if first and self.write(segment, [first], len(first)) and received < announced:
            return
        buffer = bytearray(settings.chunk_size)
        view = memoryview(buffer)
        samples: deque[tuple[float, int]] = deque([(clock(), 0)])
        sock = raw.sock
        sock.settimeout(raw.timeout)
        filled = 0
        try:
            while received < announced:
                self.check()
                want = min(len(buffer) - filled, announced - received)
                try:
                    count = sock.recv_into(view[filled : filled + want])
                except TimeoutError as error:
                    raise httpx.ReadTimeout(f"no byte for {raw.timeout:g} s", request=response.request) from error
                except OSError as error:
                    raise httpx.ReadError(str(error), request=response.request) from error
                if count == 0:
                    raise TransientError(f"the body ended after {received} of {announced} bytes", url=url)
                filled += count
                received += count
                if bucket is not None:
                    wait = bucket.reserve(count)
                    if wait > 0:
                        self.pause(wait)
                        throttled += wait
                if filled == len(buffer) or received == announced:
                    size, filled = filled, 0
                    if self.write(segment, [view[:size]], size) and received < announced:
                        return  # the range ends here (it was split): the rest is another's
                if settings.min_speed:
                    self._check_speed(samples, clock() - throttled, received, url)
        except BaseException:
            if filled:
                size, filled = filled, 0
                self.write(segment, [view[:size]], size)
            raise
        # Every byte of the body was read: the parser ends the message, and the connection is reused.
        raw.reader._remaining = 0
        for _ in pieces:
            pass

    def rollback(self, segment: Segment, begin: int) -> None:
        """Forget what this answer wrote into ``segment``: its bytes are not trusted (the next checkpoint drops them)."""
        with self.lock:
            segment.pos = segment.reserved = max(segment.start, min(begin, segment.pos))
        self.rewound()  # the hash may have read those bytes

    def _check_speed(self, samples: deque[tuple[float, int]], now: float, received: int, url: str) -> None:
        """Drop a connection slower than ``min_speed`` over ``stall_window`` (time spent throttled excluded)."""
        window = self.settings.stall_window
        samples.append((now, received))
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()
        since, before = samples[0]
        if now - since >= window and (received - before) / (now - since) < self.settings.min_speed:
            raise TooSlow(f"slower than {format_size(self.settings.min_speed)}/s over {window:g} s", url=url)

    def write(self, segment: Segment, pieces: Sequence[bytes | memoryview], size: int) -> bool:
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
            if segment.source is not None:
                self.by_source[segment.source] = self.by_source.get(segment.source, 0) + count
            checkpointer.unsynced += count
            checkpointer.changes += 1
            finished = segment.finished
        if count:
            self.listener.advanced(self.name, count)
        return finished


class _RawBody:
    """The socket an answer's body comes on, its read timeout, and the parser's body reader."""

    __slots__ = ("reader", "sock", "timeout")

    def __init__(self, sock: socket.socket, timeout: float | None, reader: Any) -> None:
        self.sock = sock
        self.timeout = timeout
        self.reader = reader


def _inner(obj: object, *names: str) -> Any:
    for name in names:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _raw_body(response: httpx.Response) -> _RawBody | None:
    """Where the body can be read straight from the socket: a plain (or TLS) HTTP/1.1 connection of
    httpcore's sync backend, a body of stated length, not encoded; else None."""
    headers = response.headers
    if headers.get("Content-Encoding") or headers.get("Transfer-Encoding") or response.http_version != "HTTP/1.1":
        return None
    stream: Any = response.extensions.get("network_stream")
    if type(stream).__name__ != "SyncStream" or type(stream).__module__ != "httpcore._backends.sync":
        return None  # e.g. TLS inside TLS (a proxy), where the socket holds the outer layer
    sock = stream.get_extra_info("socket")
    if not isinstance(sock, socket.socket):
        return None
    # httpx's stream -> httpcore's pool stream -> its HTTP/1.1 connection stream -> h11's body reader
    reader = _inner(response.stream, "_stream", "_httpcore_stream", "_stream", "_connection", "_h11_state", "_reader")
    if type(reader).__name__ != "ContentLengthReader" or not isinstance(getattr(reader, "_remaining", None), int):
        return None
    timeout = response.request.extensions.get("timeout", {}).get("read")
    return _RawBody(sock, timeout if isinstance(timeout, (int, float)) else None, reader)


def _pwrite_all(fd: int, pieces: Sequence[bytes | memoryview], count: int, at: int) -> None:
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

"""The wire: the HTTP requests of one pass at a file, each answer holding a connection slot.

It also holds the pass's stop switch: :meth:`Wire.check` and :meth:`Wire.pause` (a backoff,
the rate limit) leave as soon as it is set; :meth:`Wire.head` asks what the file is now, and
:meth:`Wire.refuse` raises what the judge's verdict against an answer means. Every streamed answer is registered while it is open, so :meth:`Wire.cut` can shut its socket
down under a thread blocked reading it (a cancel, another connection's failure); a request
made after the stop switch is set raises :class:`Stopped` instead of going out.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import NoReturn

import httpx

from ecephys_dl.answers import Head, HttpError, Retry, TooLarge, judge_head
from ecephys_dl.contract import FileTransfer
from ecephys_dl.errors import SourceError, TransferError, TransientError
from ecephys_dl.facts import Validator
from ecephys_dl.redirects import send_following
from ecephys_dl.retry import raise_for_status, retrying

__all__ = ["Stopped", "Wire"]


class Stopped(Exception):
    """A worker was told to stop (cancel, or another worker's failure): leave at a clean point."""


class Wire:
    """Requests for the file of ``transfer`` through its client and connection slots, until ``stop`` is set."""

    def __init__(self, transfer: FileTransfer, stop: threading.Event, timeout: httpx.Timeout) -> None:
        self.t = transfer
        self.shared = transfer.shared
        self.stop = stop
        self.timeout = timeout
        self._open: set[httpx.Response] = set()
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise :class:`Stopped` when this pass is to stop (its switch, or the run cancelled)."""
        if self.stop.is_set() or self.shared.cancelled:
            self.stop.set()
            raise Stopped

    def pause(self, seconds: float) -> None:
        """Wait (a retry's backoff, the rate limit), waking early when told to stop."""
        if seconds > 0:
            if self.shared.sleep is time.sleep:
                self.stop.wait(seconds)
            else:
                self.shared.sleep(seconds)
        self.check()

    @contextlib.contextmanager
    def request(self, method: str, headers: Mapping[str, str], url: str | None = None) -> Iterator[httpx.Response]:
        """A streamed answer from ``url`` (default: the file's current source), holding one connection slot while it is open."""
        shared = self.shared
        client = shared.client
        if not shared.slots.acquire(self.stop):
            raise Stopped
        try:
            target = url if url is not None else self.t.router.current.url
            request = client.build_request(method, target, headers=dict(headers), timeout=self.timeout)
            # Redirects are followed only to the file's own host or an allowed one, a few hops at most.
            response = send_following(client, request, allowed_hosts=shared.allowed_hosts)
            try:
                with self._lock:
                    self._open.add(response)
                self.check()  # an abort may have run just before the answer was registered
                yield response
            finally:
                with self._lock:
                    self._open.discard(response)
                response.close()
        finally:
            shared.slots.release()

    def cut(self) -> None:
        """Shut down the sockets of the answers open now, waking the threads reading them."""
        with self._lock:
            responses = list(self._open)
        for response in responses:
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                # shutdown, unlike close, wakes a thread blocked in recv on this socket.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.shared.slots.wake()

    def head(self) -> tuple[int | None, Validator]:
        """The server's length and validator for the file now (HEAD, retried)."""
        t = self.t

        def once() -> tuple[int | None, Validator]:
            with self.request("HEAD", {}) as response:
                verdict = judge_head(response.status_code, response.headers, t.facts.now())
                if not isinstance(verdict, Head):
                    self.refuse(response, verdict)
                return verdict.size, verdict.validator

        loop = retrying(
            self.t.settings.policy,
            sleep=self.pause,
            on_retry=lambda notice: t.listener.retried(t.name, notice),
            url=t.remote.url,
            what=f"the download of {t.name}",
        )
        try:
            result: tuple[int | None, Validator] = loop(once)
        except (Stopped, TransferError):
            raise
        except SourceError as error:
            raise t.fail(error.message, cause=error, hint=error.hint) from error
        return result

    def refuse(self, response: httpx.Response, verdict: Retry | HttpError | TooLarge) -> NoReturn:
        """Raise what a verdict against this answer means: a retry, an HTTP error, a file failing for good."""
        url = str(response.request.url)
        if isinstance(verdict, Retry):
            raise TransientError(verdict.reason, url=url)
        if isinstance(verdict, TooLarge):
            raise self.t.too_large(verdict.size, url)
        raise_for_status(response, what=f"the download of {self.t.name}")
        raise SourceError(f"the download of {self.t.name} ({url}) answered HTTP {verdict.status}")  # not reached: an error status

"""The retry policy: which failures are transient, how long to wait, and the retry loop.

Retrying is done by tenacity, configured in one place (:func:`retrying`): only transient
failures are retried (transport errors and HTTP 408, 429, 500, 502, 503, 504), the wait is
exponential backoff with jitter or the server's ``Retry-After`` when that is longer, and when
the attempts run out the last failure becomes :class:`~ecephys_dl.errors.SourceUnreachable`
(exit 5). Anything else (a 404, a malformed answer) fails at once as a
:class:`~ecephys_dl.errors.SourceError`.

A request function signals a transient status by raising
:class:`~ecephys_dl.errors.TransientError` (see :func:`raise_for_status`);
:func:`call_with_retries` runs such a function under the policy and turns stray httpx errors
into :class:`~ecephys_dl.errors.SourceError`.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TypeVar

import httpx
import tenacity

from ecephys_dl.errors import SourceError, SourceUnreachable, TransientError, UsageError

__all__ = [
    "TLS_HINT",
    "TRANSIENT_STATUSES",
    "RetryNotice",
    "RetryPolicy",
    "call_with_retries",
    "describe",
    "is_transient",
    "raise_for_status",
    "retry_after_seconds",
    "retrying",
    "tls_refused",
]

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
TLS_HINT = (
    "if the server's certificate is signed by your site's own certificate authority, "
    "give that CA's certificates with --ca-bundle PATH"
)
# Past 2**64 the backoff is max_backoff anyway; capping the exponent avoids float overflow.
_MAX_EXPONENT = 64
_DELTA_SECONDS = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried.

    After failed attempt ``n`` (from 1) the wait is ``min(max_backoff, backoff * 2**(n-1))``
    stretched by a random factor between 1 and ``1 + jitter`` (and capped at ``max_backoff``
    again), or the server's ``Retry-After`` when it asks for longer, capped at ``max_retry_after``.
    """

    attempts: int = 6
    backoff: float = 1.0
    max_backoff: float = 60.0
    jitter: float = 0.5
    max_retry_after: float = 600.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise UsageError(f"retry attempts must be a positive whole number, not {self.attempts!r}")
        for name in ("backoff", "max_backoff", "jitter", "max_retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UsageError(f"retry {name.replace('_', ' ')} must be a finite number >= 0, not {value!r}")

    def backoff_for(self, attempt: int, *, rng: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt number ``attempt`` (from 1), before any ``Retry-After``."""
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        base = min(self.max_backoff, self.backoff * 2.0**exponent)
        return min(self.max_backoff, base * (1.0 + self.jitter * rng()))

    def wait_for(self, attempt: int, retry_after: float | None, *, rng: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt ``attempt``: the backoff, or ``Retry-After`` if longer."""
        wait = self.backoff_for(attempt, rng=rng)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


@dataclass(frozen=True)
class RetryNotice:
    """A failed attempt about to be retried: which attempt (from 1), the wait in seconds, why."""

    attempt: int
    wait: float
    reason: str


def is_transient(error_or_response: BaseException | httpx.Response) -> bool:
    """Whether a failure may go away by itself: worth retrying.

    Transport errors (connect and read/write timeouts, resets, refused connections, a server
    hanging up mid-answer) and HTTP 408, 429, 500, 502, 503 and 504 are; other statuses and
    errors (bad URLs, unsupported schemes, our own protocol errors, a certificate that is not
    trusted) are not.
    """
    if isinstance(error_or_response, httpx.Response):
        return error_or_response.status_code in TRANSIENT_STATUSES
    if isinstance(error_or_response, TransientError):
        return True
    if tls_refused(error_or_response):
        return False  # the same certificate will be refused again
    return isinstance(error_or_response, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))


def tls_refused(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a TLS certificate that failed verification."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(error)


def retry_after_seconds(response: httpx.Response, *, now: datetime | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None.

    A date in the past means 0; an unparsable header is ignored (None).
    """
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    match = _DELTA_SECONDS.fullmatch(value)
    if match is not None:
        seconds = float(match.group(1))
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def describe(error: BaseException) -> str:
    """A short human description of a failed attempt (without the URL)."""
    if isinstance(error, TransientError):
        return error.message
    if tls_refused(error):
        return f"the server's TLS certificate is not trusted ({str(error).strip()})"
    names = {
        httpx.ConnectTimeout: "timed out connecting",
        httpx.ReadTimeout: "timed out waiting for data",
        httpx.WriteTimeout: "timed out sending the request",
        httpx.PoolTimeout: "timed out waiting for a free connection",
        httpx.ConnectError: "could not connect",
        httpx.ReadError: "connection broken while reading",
        httpx.WriteError: "connection broken while sending",
        httpx.RemoteProtocolError: "the server broke the HTTP protocol or hung up",
    }
    for kind, words in names.items():
        if isinstance(error, kind):
            detail = str(error).strip()
            # httpx's timeouts mostly say just "timed out": that adds nothing to the words.
            return f"{words} ({detail})" if detail and detail != "timed out" else words
    detail = str(error).strip()
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _url_of(error: BaseException | None, fallback: str | None) -> str | None:
    if isinstance(error, TransientError):
        return error.url
    if isinstance(error, httpx.RequestError):
        try:
            return str(error.request.url)
        except RuntimeError:  # httpx raises this when the error carries no request
            pass
    return fallback


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], object] = time.sleep,
    on_retry: Callable[[RetryNotice], None] | None = None,
    url: str | None = None,
    what: str | None = None,
    hint: str | None = None,
    rng: Callable[[], float] = random.random,
) -> tenacity.Retrying:
    """A tenacity retry loop for one request under ``policy``; call it with the request function.

    Only transient failures (:func:`is_transient`) are retried; other exceptions pass through
    unchanged. When the attempts run out, :class:`SourceUnreachable` is raised naming ``what``
    (e.g. "the RMA query 'units'"), the URL (from the error, else ``url``) and the last error.
    ``on_retry`` hears of every retry before its wait; ``sleep`` does the waiting.
    """

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        after = error.retry_after if isinstance(error, TransientError) else None
        return policy.wait_for(state.attempt_number, after, rng=rng)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is None:
            return
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        reason = describe(error) if error is not None else "unknown failure"
        on_retry(RetryNotice(attempt=state.attempt_number, wait=float(delay), reason=reason))

    def give_up(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        where = _url_of(error, url) or "the server"
        subject = f"{what} ({where})" if what else where
        last = describe(error) if error is not None else "unknown failure"
        tries = "attempt" if state.attempt_number == 1 else f"{state.attempt_number} attempts"
        raise SourceUnreachable(
            f"no usable answer from {subject} after {tries}; last error: {last}",
            hint=hint or "the server may be down or overloaded: try again later",
        ) from error

    def nap(seconds: float) -> None:
        sleep(seconds)

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(is_transient),
        sleep=nap,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )


def call_with_retries(
    attempt: Callable[[], T],
    *,
    policy: RetryPolicy,
    url: str,
    what: str | None = None,
    hint: str | None = None,
    sleep: Callable[[float], object] = time.sleep,
    on_retry: Callable[[RetryNotice], None] | None = None,
) -> T:
    """Run ``attempt`` under :func:`retrying`; a non-transient httpx error becomes a SourceError."""

    def guarded() -> T:
        try:
            return attempt()
        except httpx.HTTPError as error:
            if is_transient(error):
                raise
            subject = f"{what} ({url})" if what else url
            if tls_refused(error):
                raise SourceError(f"request to {subject} failed: {describe(error)}", hint=TLS_HINT) from error
            raise SourceError(f"request to {subject} failed: {describe(error)}", hint=hint) from error
        except httpx.StreamError as error:  # e.g. a body read twice: a bug, but say where
            raise SourceError(f"request to {url} failed: {describe(error)}", hint=hint) from error

    loop = retrying(policy, sleep=sleep, on_retry=on_retry, url=url, what=what, hint=hint)
    result: T = loop(guarded)
    return result


def raise_for_status(response: httpx.Response, *, what: str | None = None, hint: str | None = None) -> None:
    """Raise :class:`TransientError` for a transient status and :class:`SourceError` for any other non-2xx."""
    status = response.status_code
    if 200 <= status < 300:
        return
    url = str(response.request.url)
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    said = f"HTTP {status} {phrase}".rstrip()
    if status in TRANSIENT_STATUSES:
        raise TransientError(f"answered {said}", url=url, status=status, retry_after=retry_after_seconds(response))
    subject = f"{what} ({url})" if what else url
    raise SourceError(f"{subject} answered {said}", hint=hint)

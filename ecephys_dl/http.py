"""The HTTP policy shared by every request: the client's settings, what is transient, how to retry.

Redirects are never followed blindly: :func:`send_following` follows at most
:data:`MAX_REDIRECTS` hops, each to the request's own host or to a host the user allowed, and
only over HTTP(S) without giving up TLS. Bodies read whole (:func:`read_body`) are bounded in
bytes after decompression, so neither a huge nor a compressed answer can exhaust memory.

Retrying is done by tenacity, configured in one place (:func:`retrying`): only transient
failures are retried (transport errors and HTTP 408, 429, 500, 502, 503, 504), the wait is
exponential backoff with jitter or the server's ``Retry-After`` when that is longer, and when
the attempts run out the last failure becomes :class:`~ecephys_dl.errors.SourceUnreachable`
(exit 5). Anything else (a 404, a malformed answer) fails at once as a
:class:`~ecephys_dl.errors.SourceError`.

A request function signals a transient status by raising :class:`TransientError`
(see :func:`raise_for_status`); :func:`call_with_retries` runs such a function under the policy
and turns stray httpx errors into :class:`~ecephys_dl.errors.SourceError`.
"""

from __future__ import annotations

import email.utils
import math
import os
import random
import re
import ssl
import time
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
import tenacity

from ecephys_dl import __version__
from ecephys_dl.errors import SourceError, SourceUnreachable, UsageError

__all__ = [
    "MAX_REDIRECTS",
    "REDIRECT_STATUSES",
    "TLS_HINT",
    "TRANSIENT_STATUSES",
    "USER_AGENT",
    "RetryNotice",
    "RetryPolicy",
    "TransientError",
    "call_with_retries",
    "check_redirect",
    "content_length",
    "describe",
    "host_allowed",
    "is_transient",
    "make_client",
    "normalize_hosts",
    "raise_for_status",
    "read_body",
    "retry_after_seconds",
    "retrying",
    "send_following",
    "tls_refused",
]

USER_AGENT = f"ecephys-dl/{__version__}"
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
TLS_HINT = (
    "if the server's certificate is signed by your site's own certificate authority, "
    "give that CA's certificates with --ca-bundle PATH"
)
# A length of more than 19 digits is past 2**63: no real file, and int() of thousands of digits
# is refused by Python itself, so such a header is treated as no length at all.
_LENGTH = re.compile(r"\s*([0-9]{1,19})\s*")
# Encodings a whole-body read decodes itself, with a bound on the decoded size; zlib's wbits:
# 16 + MAX_WBITS reads a gzip header, MAX_WBITS a zlib stream.
_DECODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

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


class TransientError(SourceUnreachable):
    """One failed attempt worth retrying: a transient HTTP status, or a request over its deadline.

    It is raised inside a retried request function; if one ever escapes the retry loop it still
    reads as "unreachable, try later" (exit 5).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.url = url
        self.status = status
        self.retry_after = retry_after


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


def content_length(response: httpx.Response) -> int | None:
    """The answer's ``Content-Length`` as a number of bytes, or None when absent or not a plain number."""
    match = _LENGTH.fullmatch(response.headers.get("Content-Length") or "")
    return int(match.group(1)) if match is not None else None


def _decoded(raw: Iterator[bytes], encoding: str, limit: int, url: str) -> Iterator[bytes]:
    """The decompressed bytes of ``raw``, never more than ``limit + 1`` of them from one step.

    zlib's ``max_length`` keeps each step small, so a small compressed body that expands a
    thousandfold (a "zip bomb") is stopped by the caller's count before it fills memory.
    """
    wbits = _DECODINGS[encoding]
    decoder = zlib.decompressobj(wbits)
    seen = False
    try:
        for chunk in raw:
            data = chunk
            while data:
                seen = True
                out = decoder.decompress(data, limit + 1)
                if out:
                    yield out
                data = decoder.unconsumed_tail
                if decoder.eof and not data:
                    data = decoder.unused_data
                    if data and wbits != _DECODINGS["gzip"]:
                        raise SourceError(f"{url} sent bytes after the end of its {encoding} body")
                    if data:  # gzip members may follow one another: they are one body
                        decoder = zlib.decompressobj(wbits)
        if seen and not decoder.eof:
            raise SourceError(f"{url} sent a {encoding} body that ends before its compressed stream does")
    except zlib.error as error:
        raise SourceError(f"{url} sent a {encoding} body that does not decompress ({error})") from None


def read_body(response: httpx.Response, *, max_bytes: int, deadline: float | None = None) -> bytes:
    """Read a streamed response's body, refusing more than ``max_bytes`` while reading.

    A gzip or deflate body (sent although we ask for none) is decompressed here, step by
    step, and ``max_bytes`` bounds the decompressed bytes; another encoding is refused.
    ``deadline`` (a :func:`time.monotonic` value) bounds the whole read: past it, the attempt
    fails with a :class:`TransientError`, so a server that trickles bytes cannot hold us forever.
    """
    url = str(response.request.url)
    announced = content_length(response)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity") and announced is not None and announced > max_bytes:
        raise SourceError(f"{url} announced {announced} bytes, more than the {max_bytes} accepted")
    if encoding not in ("", "identity") and encoding not in _DECODINGS:
        raise SourceError(f"{url} answered with a body encoded as {encoding!r}, which is not read")
    pieces: Iterator[bytes]
    if response.is_stream_consumed:
        # An answer already read whole (built in memory): httpx has decoded it.
        pieces = iter([response.content])
    elif encoding in ("", "identity"):
        pieces = response.iter_raw()
    else:
        # httpx's own decoding would expand a whole network chunk at once: decode the raw bytes here.
        pieces = _decoded(response.iter_raw(), encoding, max_bytes, url)
    chunks: list[bytes] = []
    size = 0
    for chunk in pieces:
        size += len(chunk)
        if size > max_bytes:
            raise SourceError(f"{url} sent more than the {max_bytes} bytes accepted for this answer")
        chunks.append(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise TransientError("the answer took too long to arrive", url=url)
    return b"".join(chunks)


def normalize_hosts(hosts: Collection[str]) -> frozenset[str]:
    """Host names (``host`` or ``host:port``) checked and in canonical form: lower case, IPv6 in brackets.

    :class:`UsageError` for anything that is not a bare host name, e.g. a URL with a scheme or path.
    """
    if isinstance(hosts, str):
        hosts = [hosts]
    canonical: set[str] = set()
    for entry in hosts:
        text = entry.strip() if isinstance(entry, str) else ""
        try:
            parts = urlsplit("//" + text)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if (
            parts is None
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or "@" in text
            or any(c.isspace() or ord(c) < 32 for c in text)
        ):
            raise UsageError(
                f"not a host name: {entry!r}", hint="give a bare host, optionally with a port, e.g. --allow-host mirror.example.org"
            )
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        canonical.add(host if port is None else f"{host}:{port}")
    return frozenset(canonical)


def host_allowed(url: httpx.URL | str, allowed_hosts: Collection[str]) -> bool:
    """Whether the host of ``url`` is one of ``allowed_hosts`` (an entry with a port must match it too)."""
    if not allowed_hosts:
        return False
    try:
        target = httpx.URL(url) if isinstance(url, str) else url
    except (httpx.InvalidURL, ValueError):  # UnicodeError is a ValueError
        return False
    host = target.host.lower()
    if not host:
        return False
    shown = f"[{host}]" if ":" in host else host
    port = target.port if target.port is not None else {"http": 80, "https": 443}.get(target.scheme)
    names = normalize_hosts(allowed_hosts)
    return shown in names or f"{shown}:{port}" in names


def check_redirect(
    location: str | None, current: httpx.URL, origin: httpx.URL, allowed_hosts: Collection[str] = ()
) -> httpx.URL:
    """Where a redirect from ``current`` leads, if it may be followed; :class:`SourceError` otherwise.

    Followed: HTTP(S) targets on the host of ``origin`` (the URL first asked for) or on an
    allowed host. Refused: a missing or unparsable Location, another scheme (``file:``,
    ``ftp:``...), a step down from HTTPS to HTTP, and any other host.
    """
    if not location or not location.strip():
        raise SourceError(f"{current} answered a redirect without a Location")
    try:
        target = current.join(location.strip())
    except (httpx.InvalidURL, ValueError) as error:
        raise SourceError(f"{current} redirected to {location!r}, which is not a usable URL ({error})") from None
    hint: str | None = None
    if target.scheme not in ("http", "https"):
        reason = "which is not an HTTP(S) address"
    elif current.scheme == "https" and target.scheme != "https":
        reason = "which gives up TLS"
    elif target.host.lower() != origin.host.lower() and not host_allowed(target, allowed_hosts):
        reason = f"another host than {origin.host}"
        hint = f"if {target.host} is a server you trust, allow it with --allow-host {target.host}"
    else:
        return target
    raise SourceError(f"{current} redirected to {str(target)[:300]!r}, {reason}: not followed", hint=hint)


def send_following(
    client: httpx.Client,
    request: httpx.Request,
    *,
    allowed_hosts: Collection[str] = (),
    max_redirects: int = MAX_REDIRECTS,
) -> httpx.Response:
    """Send ``request`` (streamed), following at most ``max_redirects`` redirects that :func:`check_redirect` allows.

    The answer returned is open: the caller reads and closes it. A refused redirect, or one
    too many, is a :class:`SourceError` (not retried: the server will say the same again).
    """
    origin = request.url
    current = request
    for hop in range(max_redirects + 1):
        try:
            response = client.send(current, stream=True, follow_redirects=False)
        except httpx.RemoteProtocolError as error:
            # httpx parses a redirect's Location even when not following it; one it cannot
            # parse is the server's answer, and the same again on a retry: not transient.
            if "location header" not in str(error).lower():
                raise
            raise SourceError(f"{current.url} redirected to a Location that is not a usable URL ({error})") from None
        if response.status_code not in REDIRECT_STATUSES:
            return response
        location = response.headers.get("Location")
        response.close()
        if hop == max_redirects:
            raise SourceError(f"{origin} redirected more than {max_redirects} times: not followed further")
        target = check_redirect(location, current.url, origin, allowed_hosts)
        method = "GET" if response.status_code == 303 and current.method != "HEAD" else current.method
        # The Host header belongs to the old URL; every other header (Range, If-Range) still applies.
        headers = [(k, v) for k, v in current.headers.multi_items() if k.lower() not in ("host", "content-length")]
        current = httpx.Request(method, target, headers=headers, extensions=current.extensions)
    raise AssertionError("unreachable")


def _tls(verify: bool | str | os.PathLike[str]) -> bool | ssl.SSLContext:
    """What httpx is given as ``verify``: True, False, or a context trusting a CA bundle."""
    if isinstance(verify, bool):
        return verify
    path = os.fspath(verify)
    hint = "give a PEM file of CA certificates, or a directory of them (e.g. /etc/ssl/certs)"
    if not os.path.exists(path):
        raise UsageError(f"the CA bundle {path} does not exist", hint=hint)
    # httpx deprecates a CA bundle path as `verify`; an SSL context says the same thing.
    try:
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as error:
        raise UsageError(f"the CA bundle {path} holds no usable CA certificate ({error})", hint=hint) from None


def make_client(
    *,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    max_connections: int = 16,
    verify: bool | str | os.PathLike[str] = True,
    trust_env: bool = True,
) -> httpx.Client:
    """An HTTP/1.1 client with our user agent, timeouts, a pool of ``max_connections``.

    Certificates are verified against the system's CA store by default; ``verify`` may name a
    CA bundle (a PEM file or a directory) to trust instead, or be False to skip the check
    (never the default). A bundle that does not exist or holds no certificate is a
    :class:`UsageError`. Redirects are not followed (a redirect is an answer to judge, not to
    obey blindly: see :func:`send_following`), and bodies are asked for uncompressed, so byte
    counts and ranges mean bytes of the file. ``trust_env`` lets proxy settings come from the
    environment, as users behind proxies need.
    """
    timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=read_timeout)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.Client(
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        timeout=timeout,
        limits=limits,
        follow_redirects=False,
        http2=False,
        verify=_tls(verify),
        trust_env=trust_env,
    )

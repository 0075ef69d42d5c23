"""Host pinning and redirects: which hosts a request may reach, and which redirects are followed.

Redirects are never followed blindly: :func:`send_following` follows at most
:data:`MAX_REDIRECTS` hops, each to the request's own host or to a host the user allowed
(:func:`normalize_hosts`, :func:`host_allowed`), and only over HTTP(S) without giving up TLS
(:func:`check_redirect`).
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

import httpx

from ecephys_dl.errors import SourceError, UsageError

__all__ = ["MAX_REDIRECTS", "REDIRECT_STATUSES", "check_redirect", "host_allowed", "normalize_hosts", "send_following"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


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

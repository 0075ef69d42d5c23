"""The HTTP client: one httpx client with our user agent, timeouts, pool and TLS trust.

:func:`make_client` builds the client every request goes through: HTTP/1.1, redirects never
followed by httpx itself (see :mod:`ecephys_dl.redirects`), bodies asked for uncompressed, and
certificates checked against the system's CA store or a CA bundle the user gives.
"""

from __future__ import annotations

import os
import ssl

import httpx

from ecephys_dl import __version__
from ecephys_dl.errors import UsageError

__all__ = ["USER_AGENT", "make_client"]

USER_AGENT = f"ecephys-dl/{__version__}"


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

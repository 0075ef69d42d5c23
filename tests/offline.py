"""The tests' guard against traffic off loopback: resolving or connecting to any other host fails.

:func:`guard` patches ``socket.getaddrinfo`` and ``socket.create_connection`` (httpx's sync
transport reaches the network through them): a host other than 127.0.0.1, localhost or ::1
raises an :class:`OSError` naming it, before any DNS query or connection is made.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# The functions patched over, so a test can see whether a call went through to them.
REAL = {"getaddrinfo": socket.getaddrinfo, "create_connection": socket.create_connection}


def _check(host: object) -> None:
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    if name is None or (isinstance(name, str) and name.lower().rstrip(".") in LOOPBACK):
        return
    raise OSError(f"tests stay on loopback: refused to resolve or connect to {name!r}")


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    _check(host)
    return REAL["getaddrinfo"](host, *args, **kwargs)


def _create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
    _check(address[0])
    return REAL["create_connection"](address, *args, **kwargs)  # type: ignore[no-any-return]


@contextmanager
def guard() -> Iterator[None]:
    """Only loopback, for as long as the context lasts."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", _getaddrinfo)
        patch.setattr(socket, "create_connection", _create_connection)
        yield

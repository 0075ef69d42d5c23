"""The loopback guard of the tests: a request to another host fails before any DNS query."""

from __future__ import annotations

import socket

import httpx
import offline
import pytest


def test_an_httpx_get_off_loopback_fails_without_asking_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx's sync transport goes through the guard: the error names the host, and no lookup reached the resolver."""
    asked: list[object] = []
    real = offline.REAL["getaddrinfo"]

    def spy(host: object, *args: object, **kwargs: object) -> object:
        asked.append(host)
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setitem(offline.REAL, "getaddrinfo", spy)
    with httpx.Client(trust_env=False) as client, pytest.raises(httpx.ConnectError, match=r"example\.invalid"):
        client.get("http://example.invalid/")
    assert asked == []


@pytest.mark.parametrize("host", ["example.invalid", "api.brain-map.org", "10.0.0.1", b"example.invalid"], ids=["invalid", "warehouse", "private", "bytes"])
def test_other_hosts_are_refused(host: str | bytes) -> None:
    with pytest.raises(OSError, match="tests stay on loopback"):
        socket.getaddrinfo(host, 80)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_resolves(host: str) -> None:
    assert socket.getaddrinfo(host, 80)

"""The HTTP policy: what is transient, how long to wait, and what the user sees when retries run out.

Retry behaviour is exercised over real HTTP against the replica with its fault injection; waits
go through an injected sleep that records them instead of sleeping.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import tenacity
from support import FAST, Sleeps

from ecephys_dl import __version__
from ecephys_dl.client import USER_AGENT, make_client
from ecephys_dl.errors import ExitCode, SourceError, SourceUnreachable, TransientError, UsageError
from ecephys_dl.replica import Fault, Replica
from ecephys_dl.retry import (
    RetryNotice,
    RetryPolicy,
    call_with_retries,
    describe,
    is_transient,
    raise_for_status,
    retry_after_seconds,
    retrying,
)
from ecephys_dl.s3 import PREFIX

pytestmark = pytest.mark.timeout(60)

CSV = PREFIX + "sessions.csv"


def _get(client: httpx.Client, url: str) -> bytes:
    """One attempt at a GET: the body, or TransientError/SourceError from its status."""
    response = client.get(url)
    raise_for_status(response, what="the test file")
    return response.content


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- pure policy -------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_jitter_only_stretches_it() -> None:
    """Backoff is backoff * 2**(n-1), capped at max_backoff; jitter adds up to `jitter` of it, never past the cap."""
    policy = RetryPolicy(backoff=1.0, max_backoff=10.0, jitter=0.5)
    assert [policy.backoff_for(n, rng=lambda: 0.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert [policy.backoff_for(n, rng=lambda: 1.0) for n in (1, 2, 3, 4)] == [1.5, 3.0, 6.0, 10.0]
    assert policy.backoff_for(10_000, rng=lambda: 0.5) == 10.0  # no overflow on huge attempt numbers


def test_retry_after_wins_when_longer_and_is_capped() -> None:
    """The wait is max(backoff, Retry-After), with Retry-After capped at max_retry_after."""
    policy = RetryPolicy(backoff=1.0, max_backoff=60.0, jitter=0.0, max_retry_after=30.0)
    assert policy.wait_for(1, 5.0) == 5.0
    assert policy.wait_for(3, 2.0) == 4.0
    assert policy.wait_for(1, 3600.0) == 30.0
    assert policy.wait_for(1, None) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts": 0}, {"attempts": True}, {"backoff": -1.0}, {"jitter": float("nan")}, {"max_retry_after": float("inf")}],
)
def test_a_nonsensical_policy_is_a_usage_error(kwargs: dict[str, float]) -> None:
    """A policy that cannot be followed is refused when built."""
    with pytest.raises(UsageError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "transient"),
    [(408, True), (429, True), (500, True), (502, True), (503, True), (504, True),
     (200, False), (206, False), (301, False), (400, False), (403, False), (404, False), (416, False), (501, False)],
)  # fmt: skip
def test_transient_statuses(status: int, transient: bool) -> None:
    """Exactly 408, 429, 500, 502, 503 and 504 are worth retrying."""
    assert is_transient(httpx.Response(status)) is transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ConnectTimeout("slow"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.WriteTimeout("slow"), True),
        (httpx.PoolTimeout("busy"), True),
        (httpx.ReadError("reset"), True),
        (httpx.RemoteProtocolError("peer closed"), True),
        (TransientError("503", url="http://x"), True),
        (httpx.UnsupportedProtocol("ftp"), False),
        (httpx.LocalProtocolError("bad header"), False),
        (SourceError("bad answer"), False),
        (ValueError("bug"), False),
    ],
)
def test_transient_errors(error: BaseException, transient: bool) -> None:
    """Transport failures are transient; our own mistakes and bad answers are not."""
    assert is_transient(error) is transient


def test_retry_after_forms() -> None:
    """Retry-After is read as delta-seconds or as an HTTP date (a past date is 0); garbage is ignored."""
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    earlier = (now - timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")

    def after(value: str | None) -> float | None:
        headers = {} if value is None else {"Retry-After": value}
        return retry_after_seconds(httpx.Response(503, headers=headers), now=now)

    assert after("120") == 120.0
    assert after(" 7 ") == 7.0
    assert after(later) == 90.0
    assert after(earlier) == 0.0
    assert after(None) is None
    assert after("soon") is None
    assert after("-5") is None


def test_make_client_settings() -> None:
    """The client names itself, wants bodies uncompressed, follows no redirects and speaks HTTP/1.1."""
    with make_client(connect_timeout=3.0, read_timeout=7.0, trust_env=False) as http:
        assert http.headers["User-Agent"] == USER_AGENT == f"ecephys-dl/{__version__}"
        assert http.headers["Accept-Encoding"] == "identity"
        assert http.follow_redirects is False
        assert http.timeout.connect == 3.0 and http.timeout.read == 7.0


def test_retrying_is_a_tenacity_loop() -> None:
    """The retry loop is tenacity's, and stops after the policy's attempts."""
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ReadError("reset")
        return "ok"

    loop = retrying(FAST, sleep=Sleeps())
    assert isinstance(loop, tenacity.Retrying)
    assert loop(flaky) == "ok" and len(calls) == 3


# -- over real HTTP ------------------------------------------------------------------------------


def test_503_with_retry_after_is_retried_after_the_asked_wait(dataset_dir: Path, client: httpx.Client) -> None:
    """Two 503s with Retry-After 2, then success: two retries, each waiting at least 2 s, both reported."""
    faults = [Fault.parse("error:status=503,retry_after=2,times=2")]
    with Replica(dataset_dir, faults=faults) as replica:
        url = f"{replica.s3_url}/{CSV}"
        sleeps, notices = Sleeps(), list[RetryNotice]()
        body = call_with_retries(
            lambda: _get(client, url), policy=FAST, url=url, sleep=sleeps, on_retry=notices.append
        )
        log = replica.wait_requests(3)
    assert body == (dataset_dir / "bucket" / CSV).read_bytes()
    assert sleeps == [2.0, 2.0]
    assert [(n.attempt, n.wait) for n in notices] == [(1, 2.0), (2, 2.0)]
    assert "503" in notices[0].reason
    assert [r["status"] for r in log] == [503, 503, 200]


def test_a_long_retry_after_is_capped(dataset_dir: Path, client: httpx.Client) -> None:
    """A Retry-After beyond max_retry_after waits max_retry_after."""
    policy = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.05, max_retry_after=0.5)
    with Replica(dataset_dir, faults=[Fault.parse("error:status=429,retry_after=3600,times=1")]) as replica:
        url = f"{replica.s3_url}/{CSV}"
        sleeps = Sleeps()
        call_with_retries(lambda: _get(client, url), policy=policy, url=url, sleep=sleeps)
    assert sleeps == [0.5]


def test_exhausted_retries_are_unreachable_naming_url_and_error(dataset_dir: Path, client: httpx.Client) -> None:
    """A 503 every time: exactly `attempts` requests, then SourceUnreachable (exit 5) with the URL and the status."""
    with Replica(dataset_dir, faults=[Fault.parse("error:status=503")]) as replica:
        url = f"{replica.s3_url}/{CSV}"
        sleeps = Sleeps()
        with pytest.raises(SourceUnreachable) as caught:
            call_with_retries(lambda: _get(client, url), policy=FAST, url=url, what="the sessions table", sleep=sleeps)
        log = replica.wait_requests(3)
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    assert url in caught.value.message and "503" in caught.value.message and "the sessions table" in caught.value.message
    assert len(log) == FAST.attempts and len(sleeps) == FAST.attempts - 1
    assert all(0.01 <= s <= 0.05 for s in sleeps)


def test_a_404_is_not_retried(replica: Replica, client: httpx.Client) -> None:
    """A non-transient status fails at once with a SourceError naming the URL and status."""
    url = f"{replica.s3_url}/{PREFIX}no-such-file.csv"
    sleeps = Sleeps()
    with pytest.raises(SourceError) as caught:
        call_with_retries(lambda: _get(client, url), policy=FAST, url=url, sleep=sleeps)
    assert not isinstance(caught.value, SourceUnreachable)
    assert url in caught.value.message and "404" in caught.value.message
    assert sleeps == [] and len(replica.wait_requests(1)) == 1


def test_a_refused_connection_is_unreachable(client: httpx.Client) -> None:
    """Nobody listening: retried, then SourceUnreachable naming the URL and the connect failure."""
    url = f"http://127.0.0.1:{_closed_port()}/file.csv"
    sleeps = Sleeps()
    with pytest.raises(SourceUnreachable) as caught:
        call_with_retries(lambda: _get(client, url), policy=FAST, url=url, sleep=sleeps)
    assert url in caught.value.message and "could not connect" in caught.value.message
    assert len(sleeps) == FAST.attempts - 1


def test_a_dropped_connection_is_retried(dataset_dir: Path, client: httpx.Client) -> None:
    """A reset mid-body is transient: the next attempt gets the whole file."""
    with Replica(dataset_dir, faults=[Fault.parse("drop:after=100,times=1")]) as replica:
        url = f"{replica.s3_url}/{CSV}"
        notices: list[RetryNotice] = []
        body = call_with_retries(lambda: _get(client, url), policy=FAST, url=url, sleep=Sleeps(), on_retry=notices.append)
    assert body == (dataset_dir / "bucket" / CSV).read_bytes()
    assert len(notices) == 1 and notices[0].reason


def test_stray_httpx_errors_become_source_errors() -> None:
    """A non-transient httpx error (here an unsupported scheme) becomes a SourceError, not a raw httpx error."""
    with make_client(trust_env=False) as http, pytest.raises(SourceError) as caught:
        call_with_retries(lambda: http.get("ftp://127.0.0.1/x"), policy=FAST, url="ftp://127.0.0.1/x", sleep=Sleeps())
    assert "ftp://127.0.0.1/x" in caught.value.message
    assert describe(httpx.ReadTimeout("")) == "timed out waiting for data"


def test_a_transient_error_reads_as_unreachable() -> None:
    """A TransientError that escapes its retry loop still means "try later" (exit 5)."""
    assert issubclass(TransientError, SourceUnreachable)
    assert TransientError("x", url="u").exit_code == ExitCode.UNREACHABLE

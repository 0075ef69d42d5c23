"""Fault injection: each fault does exactly what it says, and hits reproducibly chosen requests."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from replica_fixtures import TinyDataset, build_dataset

from ecephys_dl.replica import Fault, FaultKind, Replica
from ecephys_dl.replica.faults import FaultPlan, RequestInfo, Route

pytestmark = pytest.mark.timeout(60)

PROBES = "criteria=model::EcephysProbe,rma::options%5Bstart_row$eq{start}%5D%5Bnum_rows$eq2%5D%5Border$eq'id'%5D"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    return build_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(5.0)) as http:
        yield http


def _fetch(client: httpx.Client, url: str, **headers: str) -> tuple[bytes, BaseException | None]:
    """Stream ``url``; return what arrived and the error that ended it, if any."""
    received = b""
    try:
        with client.stream("GET", url, headers=headers) as response:
            for block in response.iter_bytes():
                received += block
    except httpx.HTTPError as err:
        return received, err
    return received, None


# -- specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("drop:after=64K,share=0.5,paths=*.nwb,times=3", "drop:after=65536,share=0.5,paths=*.nwb,times=3"),
        ("error", "error:status=503"),
        ("error:status=429,retry_after=2", "error:status=429,retry_after=2"),
        ("ignore-range", "ignore-range"),
        ("rate:bps=256K", "rate:bps=262144"),
        ("latency:seconds=0.2", "latency:seconds=0.2"),
        ("latency:seconds=200ms", "latency:seconds=0.2"),
        ("short:bytes=1000,query=*EcephysProbe*", "short:bytes=1000,query=*EcephysProbe*"),
        ("stall:seconds=2m", "stall:seconds=120,after=0"),
        ("change", "change:after=1"),
        ("html:paths=*.nwb|*.csv", "html:paths=*.nwb|*.csv"),
        ("rma-zero", "rma-zero:after_row=1"),
        (" rma-hang : seconds = 5 ", "rma-hang:seconds=5"),
    ],
)
def test_spec_round_trip(spec: str, canonical: str) -> None:
    """A spec parses to a fault whose str() is canonical and parses back to the same fault."""
    fault = Fault.parse(spec)
    assert str(fault) == canonical
    assert Fault.parse(str(fault)) == fault


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("explode", "unknown fault kind 'explode'"),
        ("drop", "'after' is required"),
        ("drop:after=lots", "bad value for 'after'"),
        ("drop:after=1K,after=2K", "given twice"),
        ("drop:bps=1K", "unknown parameter 'bps'"),
        ("error:status=404", "status must be one of"),
        ("error:retry_after=soon", "bad value for 'retry_after'"),
        ("rate:bps=0", "bps must be positive"),
        ("latency:seconds=x", "bad value for 'seconds'"),
        ("short:bytes", "expected key=value"),
        ("stall:after=5", "'seconds' is required"),
        ("change:after=-1", "bad value for 'after'"),
        ("html:share=1.5", "bad value for 'share'"),
        ("rma-zero:times=two", "bad value for 'times'"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    """Malformed specs raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Fault.parse(spec)


def test_selection_is_a_pure_function_of_seed_path_and_count() -> None:
    """The same seed picks the same requests in any order of arrival; another seed picks others."""
    faults = [Fault.parse("error:share=0.5")]
    requests = [RequestInfo(Route.FILE, "GET", f"/b/k{i % 7}", "") for i in range(200)]

    def hits(plan: FaultPlan, order: list[int]) -> set[tuple[str, int]]:
        counts: dict[str, int] = {}
        chosen = set()
        for i in order:
            request = requests[i]
            counts[request.path] = counts.get(request.path, 0) + 1
            if plan.select(request, counts[request.path]) is not None:
                chosen.add((request.path, counts[request.path]))
        return chosen

    forward = hits(FaultPlan(faults, seed=5), list(range(200)))
    # Interleave paths differently but keep each path's own order: the same requests are hit.
    by_path = sorted(range(200), key=lambda i: (requests[i].path, i))
    assert hits(FaultPlan(faults, seed=5), by_path) == forward
    assert 60 < len(forward) < 140
    assert hits(FaultPlan(faults, seed=6), list(range(200))) != forward


# -- each fault over HTTP --------------------------------------------------------------------


def test_drop(tiny: TinyDataset, client: httpx.Client) -> None:
    """drop: the client gets the first ``after`` bytes at most, then a connection reset."""
    with Replica(tiny.directory, faults=["drop:after=70000"]) as replica:
        received, error = _fetch(client, f"{replica.s3_url}/{tiny.big_key}")
        assert isinstance(error, (httpx.ReadError, httpx.RemoteProtocolError))
        assert len(received) <= 70000 < len(tiny.contents[tiny.big_key])
        assert received == tiny.contents[tiny.big_key][: len(received)]
        (record,) = replica.wait_requests(1)
        assert record["fault"] == "drop" and record["bytes"] == 70000


def test_short(tiny: TinyDataset, client: httpx.Client) -> None:
    """short: the full Content-Length is announced, exactly N bytes arrive, then the connection closes."""
    data = tiny.contents[tiny.big_key]
    with Replica(tiny.directory, faults=["short:bytes=1000"]) as replica:
        for url in (f"{replica.s3_url}/{tiny.big_key}", f"{replica.url}/api/v2/well_known_file_download/1026124469"):
            received, error = _fetch(client, url)
            assert received == data[:1000]
            assert isinstance(error, httpx.RemoteProtocolError)
            assert f"received 1000 bytes, expected {len(data)}" in str(error)


def test_short_rma(tiny: TinyDataset, client: httpx.Client) -> None:
    """short on a chunked RMA answer: N bytes of JSON, no final chunk, then the connection closes."""
    with Replica(tiny.directory, faults=["short:bytes=50"]) as replica:
        received, error = _fetch(client, f"{replica.url}/api/v2/data/query.json?{PROBES.format(start=0)}")
        assert len(received) == 50 and received.startswith(b'{"success": true')
        assert isinstance(error, httpx.RemoteProtocolError)


def test_stall_trips_read_timeout(tiny: TinyDataset) -> None:
    """stall: after ``after`` bytes nothing comes, so the client's read timeout fires."""
    with Replica(tiny.directory, faults=["stall:seconds=20,after=1000"]) as replica:
        with httpx.Client(timeout=httpx.Timeout(5.0, read=0.3)) as http:
            started = time.monotonic()
            received, error = _fetch(http, f"{replica.s3_url}/{tiny.big_key}")
        assert isinstance(error, httpx.ReadTimeout)
        assert received == tiny.contents[tiny.big_key][:1000]
        assert time.monotonic() - started < 5


def test_stall_then_continue(tiny: TinyDataset, client: httpx.Client) -> None:
    """stall: a patient client gets the whole body, intact, after the pause."""
    with Replica(tiny.directory, faults=["stall:seconds=0.3,after=5000"]) as replica:
        started = time.monotonic()
        received, error = _fetch(client, f"{replica.s3_url}/{tiny.big_key}")
        assert error is None and received == tiny.contents[tiny.big_key]
        assert time.monotonic() - started >= 0.25


def test_rate(tiny: TinyDataset, client: httpx.Client) -> None:
    """rate: a body of B bytes at R bytes/s takes at least about B/R seconds."""
    data = tiny.contents[tiny.big_key]  # 140 KiB at 256 KiB/s: at least 0.55 s
    with Replica(tiny.directory, faults=["rate:bps=256K"]) as replica:
        started = time.monotonic()
        received, error = _fetch(client, f"{replica.s3_url}/{tiny.big_key}")
        elapsed = time.monotonic() - started
    assert error is None and received == data
    assert elapsed >= 0.9 * len(data) / (256 * 1024)


def test_latency(tiny: TinyDataset, client: httpx.Client) -> None:
    """latency: the status line comes only after the delay."""
    with Replica(tiny.directory, faults=["latency:seconds=0.3,paths=*.csv"]) as replica:
        started = time.monotonic()
        response = client.get(f"{replica.s3_url}/visual-coding-neuropixels/ecephys-cache/sessions.csv")
        assert time.monotonic() - started >= 0.28
        assert response.status_code == 200 and response.content.startswith(b"id,session_type")


def test_error_with_retry_after_and_times(tiny: TinyDataset, client: httpx.Client) -> None:
    """error: that status with Retry-After; ``times=2`` limits it to the first two requests."""
    with Replica(tiny.directory, faults=["error:status=503,retry_after=2,times=2"]) as replica:
        url = f"{replica.url}/api/v2/well_known_file_download/1026124481"
        answers = [client.get(url) for _ in range(4)]
        assert [a.status_code for a in answers] == [503, 503, 200, 200]
        assert answers[0].headers["retry-after"] == "2" and len(answers[0].content) < 100
        assert answers[2].content == tiny.contents[tiny.small_key]
        assert [r["fault"] for r in replica.wait_requests(4)] == ["error", "error", None, None]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_error_statuses(tiny: TinyDataset, client: httpx.Client, status: int) -> None:
    """error: every allowed status can be injected, on RMA and listing routes too."""
    with Replica(tiny.directory, faults=[f"error:status={status}"]) as replica:
        assert client.get(f"{replica.url}/api/v2/data/query.json?{PROBES.format(start=0)}").status_code == status
        assert client.get(replica.s3_url, params={"list-type": "2"}).status_code == status
        assert "retry-after" not in client.get(f"{replica.s3_url}/{tiny.small_key}").headers


def test_ignore_range(tiny: TinyDataset, client: httpx.Client) -> None:
    """ignore-range: a Range request gets 200 and the whole body; plain requests are untouched."""
    with Replica(tiny.directory, faults=["ignore-range:times=1"]) as replica:
        url = f"{replica.s3_url}/{tiny.big_key}"
        assert client.get(url).status_code == 200  # no Range: the fault does not count it
        response = client.get(url, headers={"Range": "bytes=100-199"})
        assert response.status_code == 200 and response.content == tiny.contents[tiny.big_key]
        assert "content-range" not in response.headers
        assert client.get(url, headers={"Range": "bytes=100-199"}).status_code == 206


def test_html(tiny: TinyDataset, client: httpx.Client) -> None:
    """html: a 200 HTML error page in place of the file, with its own length."""
    with Replica(tiny.directory, faults=["html"]) as replica:
        response = client.get(f"{replica.url}/api/v2/well_known_file_download/1026124469")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html"
        assert response.content.startswith(b"<!DOCTYPE html>")
        assert response.headers["content-length"] == str(len(response.content))


def test_change(tiny: TinyDataset, client: httpx.Client) -> None:
    """change: from the next request on, new bytes and validators; an old If-Range gets 200."""
    key = tiny.big_key
    original = tiny.contents[key]
    with Replica(tiny.directory, faults=["change:after=1"]) as replica:
        s3, warehouse = f"{replica.s3_url}/{key}", f"{replica.url}/api/v2/well_known_file_download/1026124469"
        first = client.get(s3)
        assert first.content == original
        second = client.get(s3)
        assert second.status_code == 200
        assert second.content != original and len(second.content) == len(original)
        assert second.content == replica.current_bytes(key)
        # Only a region in the second half differs.
        differing = [i for i, (a, b) in enumerate(zip(original, second.content, strict=False)) if a != b]
        assert differing and min(differing) >= len(original) // 2
        assert second.headers["etag"] == f'"{hashlib.md5(second.content).hexdigest()}"' != first.headers["etag"]
        assert second.headers["last-modified"] != first.headers["last-modified"]
        # A resume with the old validators gets the new version whole.
        stale = client.get(s3, headers={"Range": "bytes=10-", "If-Range": first.headers["etag"]})
        assert stale.status_code == 200 and stale.content == second.content
        fresh = client.get(s3, headers={"Range": "bytes=10-", "If-Range": second.headers["etag"]})
        assert fresh.status_code == 206 and fresh.content == second.content[10:]
        # The warehouse serves the same new version, with its own new ETag; the listing agrees.
        served = client.get(warehouse)
        assert served.content == second.content
        assert served.headers["last-modified"] == second.headers["last-modified"]
        listing = client.get(replica.s3_url, params={"list-type": "2"}).text
        assert second.headers["etag"].replace('"', "&quot;") in listing
        assert [r["fault"] for r in replica.wait_requests(6)][:2] == [None, "change"]
        replica.set_faults([])
        assert client.get(s3).content == second.content  # the new version stays
    assert (tiny.directory / "bucket" / key).read_bytes() == original  # never written to disk


def test_change_warehouse_etag(tiny: TinyDataset, client: httpx.Client) -> None:
    """change on the warehouse route: a stale ETag or date in If-Range gets 200 and new bytes."""
    with Replica(tiny.directory, faults=["change:after=2,paths=*well_known_file_download*"]) as replica:
        url = f"{replica.url}//api/v2/well_known_file_download/1026124481"
        old = [client.get(url) for _ in range(2)]
        assert old[0].headers["etag"] == old[1].headers["etag"] and old[1].content == tiny.contents[tiny.small_key]
        for validator in (old[0].headers["etag"], old[0].headers["last-modified"]):
            response = client.get(url, headers={"Range": "bytes=0-9", "If-Range": validator})
            assert response.status_code == 200 and response.content == replica.current_bytes(tiny.small_key)
            assert response.content != tiny.contents[tiny.small_key]
            assert response.headers["etag"] != old[0].headers["etag"]


def test_rma_zero(tiny: TinyDataset, client: httpx.Client) -> None:
    """rma-zero: pages from after_row on say success with no rows, but the true total."""
    with Replica(tiny.directory, faults=["rma-zero:after_row=2"]) as replica:
        pages = [client.get(f"{replica.url}/api/v2/data/query.json?{PROBES.format(start=s)}").json() for s in (0, 2)]
    assert pages[0]["num_rows"] == 2 and len(pages[0]["msg"]) == 2
    assert pages[1]["success"] is True and pages[1]["num_rows"] == 0 and pages[1]["msg"] == []
    assert pages[1]["total_rows"] == pages[0]["total_rows"] == 4


def test_rma_hang(tiny: TinyDataset, client: httpx.Client) -> None:
    """rma-hang: an RMA request gets nothing (read timeout); files are still served."""
    with Replica(tiny.directory, faults=["rma-hang"]) as replica:
        with httpx.Client(timeout=httpx.Timeout(5.0, read=0.3)) as http, pytest.raises(httpx.ReadTimeout):
            http.get(f"{replica.url}/api/v2/data/query.json?{PROBES.format(start=0)}")
        assert client.get(f"{replica.s3_url}/{tiny.small_key}").status_code == 200


# -- selection ---------------------------------------------------------------------------------


def _statuses(tiny: TinyDataset, seed: int, faults: list[str], *, concurrent: bool = False) -> dict[str, list[int]]:
    """Fetch each of a few files ten times; return the statuses per file, in request order."""
    keys = [tiny.big_key, tiny.small_key, tiny.exact_key, tiny.odd_key]
    result: dict[str, list[int]] = {key: [] for key in keys}
    with Replica(tiny.directory, faults=faults, seed=seed) as replica:

        def run(key: str) -> None:
            with httpx.Client(timeout=5) as http:
                for _ in range(10):
                    result[key].append(http.get(f"{replica.s3_url}/{quote(key)}").status_code)

        if concurrent:
            threads = [threading.Thread(target=run, args=(key,)) for key in keys]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for key in keys:
                run(key)
    return result


def test_share_reproducible_across_servers(tiny: TinyDataset) -> None:
    """Two servers with the same seed hit the same requests, even when requests arrive concurrently."""
    faults = ["error:status=500,share=0.5"]
    first = _statuses(tiny, 11, faults)
    assert _statuses(tiny, 11, faults, concurrent=True) == first
    hits = sum(status == 500 for statuses in first.values() for status in statuses)
    assert 8 <= hits <= 32  # about half of 40
    assert _statuses(tiny, 12, faults) != first


def test_paths_selector(tiny: TinyDataset) -> None:
    """paths restricts a fault to URL paths matching the glob (alternatives with |)."""
    statuses = _statuses(tiny, 0, ["error:status=502,paths=*.json|*lfp.nwb"])
    assert set(statuses[tiny.odd_key]) == set(statuses[tiny.small_key]) == {502}
    assert set(statuses[tiny.big_key]) == set(statuses[tiny.exact_key]) == {200}


def test_query_selector_and_first_match(tiny: TinyDataset, client: httpx.Client) -> None:
    """query restricts by the decoded query; the first matching fault in the list wins."""
    faults = ["error:status=504,query=*EcephysProbe*start_row$eq2*", "error:status=500,query=*EcephysProbe*"]
    with Replica(tiny.directory, faults=faults) as replica:
        codes = [
            client.get(f"{replica.url}/api/v2/data/query.json?{PROBES.format(start=s)}").status_code for s in (0, 2)
        ]
        other = client.get(f"{replica.url}/api/v2/data/query.json?criteria=model::EcephysUnit")
    assert codes == [500, 504] and other.status_code == 200


def test_set_faults_while_running(tiny: TinyDataset, client: httpx.Client, tmp_path: Path) -> None:
    """Faults can be replaced on a running server; the log records which fault hit each request."""
    log = tmp_path / "log.jsonl"
    with Replica(tiny.directory, log_path=log) as replica:
        url = f"{replica.s3_url}/{tiny.small_key}"
        assert client.get(url).status_code == 200
        replica.set_faults([Fault.parse("error:status=429")])
        assert replica.server.faults[0].kind is FaultKind.ERROR
        assert client.get(url).status_code == 429
        replica.set_faults(["html"])
        assert client.get(url).headers["content-type"] == "text/html"
        replica.set_faults([])
        assert client.get(url).status_code == 200
        replica.wait_requests(4)
    assert [json.loads(line)["fault"] for line in log.read_text().splitlines()] == [None, "error", "html", None]


def test_rma_error_answers_success_false_with_the_message(dataset_dir: Path) -> None:
    """rma-error makes a well-formed query answer the error envelope (HTTP 200) with the given message."""
    import httpx

    from ecephys_dl.replica import Fault, Replica

    q = "criteria=model::EcephysProbe,rma::options%5Bstart_row$eq0%5D%5Bnum_rows$eq10%5D%5Border$eq'id'%5D"
    with Replica(dataset_dir, faults=[Fault.parse("rma-error:message=Data Access Error: timeout,times=1")]) as replica, httpx.Client(timeout=10) as client:
        first = client.get(f"{replica.warehouse_url}/api/v2/data/query.json?{q}")
        second = client.get(f"{replica.warehouse_url}/api/v2/data/query.json?{q}")
    assert first.status_code == 200
    assert first.json() == {"success": False, "id": 0, "start_row": 0, "num_rows": 0, "total_rows": 0, "msg": "Data Access Error: timeout"}
    assert second.json()["success"] is True
    assert str(Fault.parse("rma-error:message=boom")) == "rma-error:message=boom"

"""The RMA client: AllenSDK's exact queries, concurrent paging that never loops or loses rows, and
answers checked before they are believed.

End-to-end cases run over real HTTP against the replica (with its faults); the answers the
replica cannot be made to give (overlapping pages, a changing total) come from a scripted
``httpx.MockTransport`` server.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import FAST, Sleeps

from ecephys_dl.errors import RmaError, SourceError, SourceUnreachable, UsageError
from ecephys_dl.queries import (
    TABLE_QUERIES,
    channels_query,
    lfp_nwb_query,
    metrics_by_session_query,
    metrics_by_type_query,
    paged,
    probes_query,
    query_url,
    session_nwb_query,
    sessions_query,
    stimulus_templates_query,
    units_query,
    wire,
)
from ecephys_dl.replica import Fault, Replica
from ecephys_dl.retry import RetryNotice, RetryPolicy
from ecephys_dl.rma import Page, RmaClient, parse_envelope

pytestmark = pytest.mark.timeout(60)

MODELS = {"sessions": "EcephysSession", "probes": "EcephysProbe", "channels": "EcephysChannel", "units": "EcephysUnit"}
# Page sizes that split each tiny table into several pages (3 sessions, 17 probes, ~6,000 channels and units).
PAGE_SIZES = {"sessions": 1, "probes": 4, "channels": 1000, "units": 1000}
_PAGING = re.compile(r",rma::options\[start_row\$eq(\d+)\]\[num_rows\$eq(\d+)\]\[order\$eq'id'\]$")


class Recorder:
    """An RmaProgress that keeps what it hears."""

    def __init__(self) -> None:
        self.rows_seen: list[tuple[str, int, int]] = []
        self.retries: list[tuple[str, RetryNotice]] = []
        self._lock = threading.Lock()

    def rows(self, name: str, done: int, total: int) -> None:
        self.rows_seen.append((name, done, total))

    def retry(self, name: str, notice: RetryNotice) -> None:
        with self._lock:
            self.retries.append((name, notice))


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads((dataset_dir / "records" / f"{model}.json").read_text())
    return records


def _pages_asked(log: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start_row, num_rows) of each RMA request in the log, in start order."""
    asked = []
    for record in log:
        raw = record["path"]
        if "/api/v2/data/query.json?" in raw:
            match = _PAGING.search(unquote(raw.partition("?")[2]))
            assert match is not None, raw
            asked.append((int(match.group(1)), int(match.group(2))))
    return sorted(asked)


# -- queries -----------------------------------------------------------------------------------

# PROTOCOL.md §2, copied character for character.
PROTOCOL_TEXT = {
    "sessions": "criteria=model::EcephysSession,rma::include,specimen(donor(age)),well_known_files(well_known_file_type)",
    "probes": "criteria=model::EcephysProbe",
    "channels": "criteria=model::EcephysChannel,rma::include,structure,rma::options[tabular$eq'ecephys_channels.id,ecephys_probe_id,local_index,probe_horizontal_position,probe_vertical_position,anterior_posterior_ccf_coordinate,dorsal_ventral_ccf_coordinate,left_right_ccf_coordinate,structures.id as ecephys_structure_id,structures.acronym as ecephys_structure_acronym']",
    "units": "criteria=model::EcephysUnit",
    "metrics_type": "criteria=model::EcephysUnitMetricBundle,rma::criteria,ecephys_unit(ecephys_channel(ecephys_probe(ecephys_session[stimulus_name$in'T'])))",
    "metrics_session": "criteria=model::EcephysUnitMetricBundle,rma::criteria,ecephys_unit(ecephys_channel(ecephys_probe(ecephys_session[id$inS])))",
    "session_nwb": "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysNwb'][attachable_type$eq'EcephysSession'][attachable_id$eqS]",
    "lfp_nwb": "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysLfpNwb'][attachable_type$eq'EcephysProbe'][attachable_id$eqP]",
    "templates": "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'Stimulus'][attachable_type$eq'Product'][attachable_id$eq714914585]",
}  # fmt: skip


def test_query_builders_match_the_protocol_text() -> None:
    """Each builder gives PROTOCOL.md's string exactly, with the ids and session type in place."""
    assert sessions_query() == PROTOCOL_TEXT["sessions"]
    assert probes_query() == PROTOCOL_TEXT["probes"]
    assert channels_query() == PROTOCOL_TEXT["channels"]
    assert units_query() == PROTOCOL_TEXT["units"]
    assert dict(TABLE_QUERIES) == {name: PROTOCOL_TEXT[name] for name in ("sessions", "probes", "channels", "units")}
    stype = "brain_observatory_1.1"
    assert metrics_by_type_query(stype) == PROTOCOL_TEXT["metrics_type"].replace("'T'", f"'{stype}'")
    assert metrics_by_session_query([715093703]) == PROTOCOL_TEXT["metrics_session"].replace("$inS", "$in715093703")
    assert metrics_by_session_query([1, 2, 3]) == PROTOCOL_TEXT["metrics_session"].replace("$inS", "$in1,2,3")
    assert session_nwb_query(715093703) == PROTOCOL_TEXT["session_nwb"].replace("$eqS", "$eq715093703")
    assert session_nwb_query() == PROTOCOL_TEXT["session_nwb"].replace("[attachable_id$eqS]", "")
    assert lfp_nwb_query([810755797]) == PROTOCOL_TEXT["lfp_nwb"].replace("$eqP", "$eq810755797")
    assert lfp_nwb_query([5, 6]) == PROTOCOL_TEXT["lfp_nwb"].replace("$eqP", "$in5,6")
    assert lfp_nwb_query() == PROTOCOL_TEXT["lfp_nwb"].replace("[attachable_id$eqP]", "")
    assert stimulus_templates_query() == PROTOCOL_TEXT["templates"]


@pytest.mark.parametrize("bad", [True, 0, -4, 1.0, "12", None, "1,2"])
def test_ids_are_positive_ints_only(bad: Any) -> None:
    """Anything but a positive integer (bool included) is refused before it reaches a query."""
    with pytest.raises(UsageError):
        metrics_by_session_query([bad])
    with pytest.raises(UsageError):
        lfp_nwb_query([7, bad])
    if bad is not None:  # None asks for every session's file
        with pytest.raises(UsageError):
            session_nwb_query(bad)


def test_id_edge_cases() -> None:
    """numpy integers are ids; an empty id list and a string in place of a list are refused; a type with a quote is refused."""
    assert session_nwb_query(np.int64(7)).endswith("[attachable_id$eq7]")  # type: ignore[arg-type]
    assert metrics_by_session_query([3, 3, 4]).endswith("[id$in3,4])))")
    with pytest.raises(UsageError):
        metrics_by_session_query([])
    with pytest.raises(UsageError):
        lfp_nwb_query([])
    with pytest.raises(UsageError):
        lfp_nwb_query("12")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        metrics_by_type_query("x'])),rma::options[num_rows$eq'all'")


def test_paging_clause_and_wire_form() -> None:
    """The paging clause and percent-encoding are AllenSDK's: only brackets and spaces are escaped."""
    q = channels_query()
    assert paged("criteria=model::EcephysProbe", 5000, 5000) == (
        "criteria=model::EcephysProbe,rma::options[start_row$eq5000][num_rows$eq5000][order$eq'id']"
    )
    assert wire("a[b] c$eq'x',(y)=:z") == "a%5Bb%5D%20c$eq'x',(y)=:z"
    assert wire(q) == q.replace("[", "%5B").replace("]", "%5D").replace(" ", "%20")
    assert query_url("http://h/", "criteria=model::EcephysUnit", 0, 10) == (
        "http://h/api/v2/data/query.json?criteria=model::EcephysUnit,rma::options%5Bstart_row$eq0%5D%5Bnum_rows$eq10%5D%5Border$eq'id'%5D"
    )
    with pytest.raises(ValueError):
        paged(q, -1, 10)
    with pytest.raises(ValueError):
        paged(q, 0, 0)


# -- fetching from the replica -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_fetch_all_returns_every_record_in_order(name: str, replica: Replica, dataset_dir: Path, client: httpx.Client) -> None:
    """Every record once, in id order, from several pages; exactly the planned pages were asked for, on the wire as AllenSDK sends them."""
    size = PAGE_SIZES[name]
    progress = Recorder()
    rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, page_size=size, concurrency=3, sleep=Sleeps())
    got = rma.fetch_all(TABLE_QUERIES[name], name=name, progress=progress)
    expected = _records(dataset_dir, MODELS[name])
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    total = len(expected)
    log = replica.wait_requests(-(-total // size))
    assert _pages_asked(log) == [(start, size) for start in range(0, total, size)]
    assert len(_pages_asked(log)) > 1
    first = next(r["path"] for r in log if "start_row$eq0%5D" in r["path"])
    assert first == "/api/v2/data/query.json?" + wire(paged(TABLE_QUERIES[name], 0, size))
    dones = [done for _, done, _ in progress.rows_seen]
    assert dones == sorted(dones) and progress.rows_seen[-1] == (name, total, total)


def test_pages_are_fetched_concurrently(dataset_dir: Path, client: httpx.Client) -> None:
    """With concurrency 4 and slow pages, page requests overlap in time on the server."""
    with Replica(dataset_dir, faults=[Fault.parse("latency:seconds=0.2")]) as replica:
        rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, page_size=4, concurrency=4)
        assert len(rma.fetch_all(probes_query(), name="probes")) == 17
        log = replica.wait_requests(5)
    spans = sorted((datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp(), r["duration"]) for r in log[1:])
    overlapping = any(b_start < a_start + a_length for (a_start, a_length), (b_start, _) in pairwise(spans))
    assert overlapping


def test_a_capped_page_size_is_followed(dataset_dir: Path, client: httpx.Client) -> None:
    """A server that caps pages below what was asked: the first page's length becomes the page size, no row lost."""
    with Replica(dataset_dir, page_cap=700) as replica:
        rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, page_size=5000)
        got = rma.fetch_all(units_query(), name="units")
        log = replica.wait_requests(8)
    expected = _records(dataset_dir, "EcephysUnit")
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    assert _pages_asked(log)[1:] == [(start, 700) for start in range(700, len(expected), 700)]


def test_string_valued_tabular_answers_are_accepted(dataset_dir: Path, client: httpx.Client) -> None:
    """Channels answered with every value as a string ("215") still page and count correctly."""
    with Replica(dataset_dir, tabular_strings=True) as replica:
        rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, page_size=2500)
        got = rma.fetch_all(channels_query(), name="channels")
    assert [int(r["id"]) for r in got] == [r["id"] for r in _records(dataset_dir, "EcephysChannel")]


def test_small_queries_by_id(replica: Replica, dataset_dir: Path, client: httpx.Client) -> None:
    """fetch_one answers the per-id queries: one session's NWB file, several probes' LFP files, all session files."""
    rma = RmaClient(replica.warehouse_url, client=client, policy=FAST)
    sessions = [s["id"] for s in _records(dataset_dir, "EcephysSession")]
    probes = [p["id"] for p in _records(dataset_dir, "EcephysProbe") if p["use_lfp_data"]][:3]
    (one,) = rma.fetch_one(session_nwb_query(sessions[0]), "session NWB")
    assert one["attachable_id"] == sessions[0]
    assert sorted(f["attachable_id"] for f in rma.fetch_one(lfp_nwb_query(probes), "LFP NWB")) == sorted(probes)
    assert sorted(f["attachable_id"] for f in rma.fetch_one(session_nwb_query(), "session NWB")) == sorted(sessions)
    assert rma.fetch_one(metrics_by_session_query([sessions[0]]), "metrics")


def test_503s_with_retry_after_are_retried(dataset_dir: Path, client: httpx.Client) -> None:
    """Two 503s with Retry-After: the query succeeds, the waits honour Retry-After, progress hears of both retries."""
    faults = [Fault.parse("error:status=503,retry_after=1,times=2")]
    with Replica(dataset_dir, faults=faults) as replica:
        sleeps, progress = Sleeps(), Recorder()
        rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, page_size=4, concurrency=2, sleep=sleeps)
        got = rma.fetch_all(probes_query(), name="probes", progress=progress)
        log = replica.wait_requests(7)
    assert [r["id"] for r in got] == [r["id"] for r in _records(dataset_dir, "EcephysProbe")]
    assert sleeps == [1.0, 1.0]
    assert [name for name, _ in progress.retries] == ["probes", "probes"]
    assert [r["status"] for r in log].count(503) == 2 and len(log) == 5 + 2
    assert sorted(set(_pages_asked(log))) == [(start, 4) for start in range(0, 17, 4)]


def test_a_zero_row_page_is_an_error_not_a_loop(dataset_dir: Path, client: httpx.Client) -> None:
    """A page claiming zero rows before total_rows is reached fails the query, naming it."""
    with Replica(dataset_dir, faults=[Fault.parse("rma-zero:after_row=4")]) as replica:
        rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, page_size=4)
        with pytest.raises(RmaError) as caught:
            rma.fetch_all(probes_query(), name="probes")
    assert "zero rows" in caught.value.message and "probes" in caught.value.message
    assert caught.value.query == "probes" and "--source s3" in (caught.value.hint or "")  # the hint says what to try


def test_a_hanging_page_fails_in_bounded_time(dataset_dir: Path, client: httpx.Client) -> None:
    """An RMA request that never answers fails with SourceUnreachable after page_timeout x attempts, not never."""
    policy = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.05)
    with Replica(dataset_dir, faults=[Fault.parse("rma-hang:seconds=60")]) as replica:
        rma = RmaClient(replica.warehouse_url, client=client, policy=policy, page_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(SourceUnreachable) as caught:
            rma.fetch_all(units_query(), name="units")
        elapsed = time.monotonic() - started
    assert elapsed < 30
    assert "units" in caught.value.message and "--source s3" in (caught.value.hint or "")  # the hint says what to try


def test_a_hanging_later_page_fails_the_query(dataset_dir: Path, client: httpx.Client) -> None:
    """Only one later page hangs: the query still fails (no silently short table), in bounded time."""
    policy = RetryPolicy(attempts=2, backoff=0.01, max_backoff=0.05)
    fault = Fault.parse("rma-hang:seconds=60,query=*start_row$eq2000*")
    with Replica(dataset_dir, faults=[fault]) as replica:
        rma = RmaClient(replica.warehouse_url, client=client, policy=policy, page_size=1000, page_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(SourceUnreachable):
            rma.fetch_all(units_query(), name="units")
    assert time.monotonic() - started < 30


def test_a_refused_query_shows_the_servers_message(replica: Replica, client: httpx.Client) -> None:
    """success false: an RmaError carrying the server's msg, not retried."""
    q = "criteria=model::NoSuchModel"
    said = client.get(f"{replica.warehouse_url}/api/v2/data/query.json?{q}").json()["msg"]
    replica.wait_requests(1)  # the log line lands just after the answer: wait for it before clearing
    replica.clear_requests()
    sleeps = Sleeps()
    rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, sleep=sleeps)
    with pytest.raises(RmaError) as caught:
        rma.fetch_all(q, name="bogus")
    assert " ".join(said.split())[:100] in caught.value.message and "bogus" in caught.value.message
    assert sleeps == [] and len(replica.wait_requests(1)) == 1


def test_a_refused_later_page_is_retried(dataset_dir: Path, client: httpx.Client) -> None:
    """success false on a page after the first (the query is sound) is retried, and the table comes out whole."""
    fault = Fault.parse("rma-error:message=Data Access Error,times=2,query=*start_row$eq1000*")
    with Replica(dataset_dir, faults=[fault]) as replica:
        progress = Recorder()
        rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, page_size=1000, sleep=Sleeps())
        got = rma.fetch_all(units_query(), name="units", progress=progress)
    assert [r["id"] for r in got] == [r["id"] for r in _records(dataset_dir, "EcephysUnit")]
    assert [n.reason for _, n in progress.retries] == ["refused the page at row 1000: Data Access Error"] * 2


def test_a_page_refused_every_time_is_unreachable(dataset_dir: Path, client: httpx.Client) -> None:
    """A later page refused on every attempt: SourceUnreachable quoting the server's message."""
    fault = Fault.parse("rma-error:message=Data Access Error,query=*start_row$eq1000*")
    with Replica(dataset_dir, faults=[fault]) as replica:
        rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, page_size=1000, sleep=Sleeps())
        with pytest.raises(SourceUnreachable, match="Data Access Error"):
            rma.fetch_all(units_query(), name="units")


def test_a_refused_first_page_is_an_rma_error_at_once(dataset_dir: Path, client: httpx.Client) -> None:
    """success false (with HTTP 200) on the first page: RmaError with the message, no retry."""
    with Replica(dataset_dir, faults=[Fault.parse("rma-error:message=Data Access Error")]) as replica:
        sleeps = Sleeps()
        rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, sleep=sleeps)
        with pytest.raises(RmaError, match="refused the probes query: Data Access Error"):
            rma.fetch_all(probes_query(), name="probes")
        assert sleeps == [] and len(replica.wait_requests(1)) == 1


def test_a_404_is_not_retried(replica: Replica, client: httpx.Client) -> None:
    """A wrong base URL (404) fails at once with a SourceError naming the status."""
    sleeps = Sleeps()
    rma = RmaClient(replica.warehouse_url + "/wrong", client=client, policy=FAST, sleep=sleeps)
    with pytest.raises(SourceError) as caught:
        rma.fetch_all(probes_query(), name="probes")
    assert not isinstance(caught.value, SourceUnreachable)
    assert "404" in caught.value.message and sleeps == []
    assert len(replica.wait_requests(1)) == 1


def test_connection_refused_is_unreachable(client: httpx.Client) -> None:
    """Nobody listening on the port: SourceUnreachable after the attempts, naming the query."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    rma = RmaClient(f"http://127.0.0.1:{port}", client=client, policy=FAST, sleep=sleeps)
    with pytest.raises(SourceUnreachable) as caught:
        rma.fetch_all(sessions_query(), name="sessions")
    assert "sessions" in caught.value.message and f"127.0.0.1:{port}" in caught.value.message
    assert len(sleeps) == FAST.attempts - 1


def test_an_oversized_answer_is_refused(replica: Replica, client: httpx.Client) -> None:
    """A body past max_bytes is refused while it streams, and not retried."""
    rma = RmaClient(replica.warehouse_url, client=client, policy=FAST, max_bytes=10_000, sleep=Sleeps())
    with pytest.raises(SourceError, match="more than the 10000 bytes"):
        rma.fetch_all(units_query(), name="units")


# -- answers the replica does not give: a scripted server --------------------------------------


def _scripted(answer: Callable[[int, int], dict[str, Any]]) -> httpx.Client:
    """A client whose server answers each page request with ``answer(start_row, num_rows)``."""

    def handler(request: httpx.Request) -> httpx.Response:
        match = _PAGING.search(unquote(request.url.query.decode()))
        assert match is not None
        return httpx.Response(200, json=answer(int(match.group(1)), int(match.group(2))))

    return httpx.Client(transport=httpx.MockTransport(handler))


def _envelope(start: int, ids: list[int], total: int) -> dict[str, Any]:
    return {"success": True, "id": 0, "start_row": start, "num_rows": len(ids), "total_rows": total,
            "msg": [{"id": i} for i in ids]}  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        # total_rows grows between pages: the table changed under us
        (lambda s, n: _envelope(s, list(range(s + 1, min(s + n, 10) + 1)), 10 if s == 0 else 12), "changed"),
        # the second page repeats the first page's ids
        (lambda s, n: _envelope(s, list(range(1, min(n, 10 - s) + 1)), 10), "two pages"),
        # a middle page is one row short
        (lambda s, n: _envelope(s, list(range(s + 1, s + (n - 1 if s == 4 else min(n, 10 - s)) + 1)), 10), "not the 4 expected"),
        # a page answers from the wrong row
        (lambda s, n: _envelope(0 if s == 8 else s, list(range(s + 1, min(s + n, 10) + 1)), 10), "answered from row 0"),
        # the first page is empty although rows are announced
        (lambda s, n: _envelope(s, [], 10), "zero rows"),
    ],
)
def test_pages_that_do_not_fit_together_fail(answer: Callable[[int, int], dict[str, Any]], words: str) -> None:
    """Every inconsistency between pages is an RmaError, never a loop or a silently wrong table."""
    with _scripted(answer) as scripted:
        rma = RmaClient("http://warehouse.invalid", client=scripted, policy=FAST, page_size=4, sleep=Sleeps())
        with pytest.raises(RmaError, match=words):
            rma.fetch_all(units_query(), name="units")


def test_an_empty_table_is_one_request() -> None:
    """total_rows 0: an empty list, and no further page requested."""
    asked: list[int] = []

    def answer(start: int, rows: int) -> dict[str, Any]:
        asked.append(start)
        return _envelope(start, [], 0)

    with _scripted(answer) as scripted:
        assert RmaClient("http://w.invalid", client=scripted, policy=FAST).fetch_all(units_query(), name="units") == []
    assert asked == [0]


# -- the envelope parser -----------------------------------------------------------------------


def test_a_good_envelope_parses() -> None:
    """A well-formed page gives its counts and records; tabular string ids are ids."""
    body = json.dumps(_envelope(4, [5, 6], 10)).encode()
    assert parse_envelope(body, query_name="units") == Page(4, 2, 10, ({"id": 5}, {"id": 6}))
    body = json.dumps({**_envelope(0, [], 1), "num_rows": 1, "msg": [{"id": "215"}]}).encode()
    assert parse_envelope(body, query_name="channels").records == ({"id": "215"},)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<html>busy</html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"success": false, "msg": "Data Access error in query: bad model"}', "bad model"),
        (b'{"success": "true", "msg": []}', "refused"),
        (b'{"success": true, "start_row": 0, "num_rows": 0, "msg": []}', "total_rows"),
        (b'{"success": true, "start_row": 0, "num_rows": true, "total_rows": 1, "msg": []}', "num_rows"),
        (b'{"success": true, "start_row": -1, "num_rows": 0, "total_rows": 1, "msg": []}', "negative"),
        (b'{"success": true, "start_row": 0, "num_rows": 2, "total_rows": 2, "msg": [{"id": 1}]}', "holds 1 records"),
        (b'{"success": true, "start_row": 0, "num_rows": 1, "total_rows": 2, "msg": "x"}', "list of records"),
        (b'{"success": true, "start_row": 0, "num_rows": 1, "total_rows": 2, "msg": [7]}', "not an object"),
        (b'{"success": true, "start_row": 0, "num_rows": 1, "total_rows": 2, "msg": [{"id": true}]}', "no integer id"),
        (b'{"success": true, "start_row": 0, "num_rows": 1, "total_rows": 2, "msg": [{"id": 1.5}]}', "no integer id"),
        (b'{"success": true, "start_row": 0, "num_rows": 1, "total_rows": 2, "msg": [{"name": "a"}]}', "no integer id"),
        (b'{"success": true, "start_row": 0, "num_rows": 2, "total_rows": 2, "msg": [{"id": 1}, {"id": 1}]}', "twice"),
        (b'{"success": true, "start_row": 1, "num_rows": 2, "total_rows": 2, "msg": [{"id": 1}, {"id": 2}]}', "past total_rows"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_malformed_envelopes_are_rma_errors(body: bytes, words: str) -> None:
    """Each malformed answer is an RmaError that names the query and says what is wrong."""
    with pytest.raises(RmaError, match=words) as caught:
        parse_envelope(body, query_name="units")
    assert caught.value.query == "units" and "units" in caught.value.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_give_rma_errors(body: bytes) -> None:
    """Whatever bytes arrive, the parser returns a Page or raises RmaError: nothing else escapes."""
    try:
        parse_envelope(body, query_name="q")
    except RmaError:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
_records_strategy = st.lists(
    st.one_of(_json, st.fixed_dictionaries({"id": st.one_of(st.integers(-3, 5), st.text(max_size=3), st.booleans())})),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "success": st.one_of(st.booleans(), _json),
            "start_row": st.one_of(st.integers(-2, 6), _json),
            "num_rows": st.one_of(st.integers(-2, 6), _json),
            "total_rows": st.one_of(st.integers(-2, 12), _json),
            "msg": st.one_of(_records_strategy, _json),
        },
    )
)
def test_random_envelopes_give_a_consistent_page_or_an_rma_error(envelope: dict[str, Any]) -> None:
    """Near-valid JSON envelopes either parse into a self-consistent Page or raise RmaError."""
    try:
        page = parse_envelope(json.dumps(envelope).encode(), query_name="q")
    except RmaError:
        return
    assert page.num_rows == len(page.records) and page.start_row + page.num_rows <= page.total_rows
    assert all(isinstance(r, dict) for r in page.records)

"""One file from several sources at once: pieces from the warehouse, the S3 mirror and the DANDI
blob bucket of the replica, over real HTTP on loopback; per-source accounting, drops and
re-issues, the one-source rule without a published digest, and a mixed partial resumed after a
SIGKILL. Faults are aimed at one source through their ``paths`` selector."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import FAST, Sleeps

from ecephys_dl.audit import suspects, without
from ecephys_dl.health import Failure, SourceView, pick
from ecephys_dl.partial import Origin, Record, read_record, sidecar_path
from ecephys_dl.replica import Replica
from ecephys_dl.replica.dandi import blob_key
from ecephys_dl.routing import drop_now
from ecephys_dl.transfer import RemoteFile, Shared, SourceLink, TransferError, TransferSettings, download

pytestmark = pytest.mark.timeout(90)

SETTINGS = TransferSettings(segment_size=64 * 1024, min_segment=16 * 1024, chunk_size=8 * 1024, connections=6, stall_timeout=2.0,
                            policy=FAST)  # fmt: skip
PATHS = {"warehouse": "/api/v2/well_known_file_download/*", "s3": "/allen-brain-observatory/*", "dandi": "/dandiarchive/*"}


def _source_of(path: str) -> str:
    for name, glob in PATHS.items():
        if path.startswith(glob.rstrip("*")):
            return name
    return "other"


# -- the pure decisions -------------------------------------------------------------------------------


def _v(name: str, order: int, active: int = 0, cap: int | None = None, speed: float | None = None) -> SourceView:
    return SourceView(name, order, active, cap, speed)


@pytest.mark.parametrize(
    ("views", "avoid", "expected"),
    [
        ([_v("s3", 0), _v("dandi", 1)], (), "s3"),
        ([_v("s3", 0, active=1), _v("dandi", 1)], (), "dandi"),
        ([_v("s3", 0, speed=5e6), _v("dandi", 1)], (), "dandi"),
        ([_v("s3", 0, speed=5e6), _v("dandi", 1, speed=9e6)], (), "dandi"),
        ([_v("s3", 0, speed=9e6, active=3), _v("dandi", 1, speed=5e6)], (), "s3"),
        ([_v("s3", 0, speed=9e6, active=2, cap=2), _v("dandi", 1, speed=5e6)], (), "dandi"),
        ([_v("s3", 0, speed=9e6, active=2, cap=2), _v("dandi", 1, speed=5e6, active=2, cap=2)], (), None),
        ([_v("s3", 0, speed=9e6), _v("dandi", 1, speed=5e6)], ("s3",), "dandi"),
        ([_v("s3", 0, speed=9e6)], ("s3",), None),
        ([_v("s3", 0, speed=5e6), _v("dandi", 1, speed=5e6, active=1)], (), "s3"),
        ([_v("s3", 0, speed=0.0), _v("warehouse", 2, speed=1e5)], (), "warehouse"),
        ([], (), None),
    ],
    ids=["order-first", "fewest-connections", "unmeasured-first", "fastest", "fastest-despite-connections", "fastest-full",
         "all-full", "avoid-just-failed", "only-one-avoided", "tie-fewer-connections", "stalled-loses", "none"],  # fmt: skip
)
def test_pick_sends_the_next_request_where_bytes_come_fastest(views: list[SourceView], avoid: tuple[str, ...], expected: str | None) -> None:
    assert pick(views, avoid) == expected


@pytest.mark.parametrize(
    ("how", "strikes", "others", "expected"),
    [
        (Failure.ERROR, 1, 2, False),
        (Failure.ERROR, 2, 2, True),
        (Failure.STALL, 1, 1, True),
        (Failure.WRONG, 1, 1, True),
        (Failure.WRONG, 5, 0, False),
        (Failure.STALL, 1, 0, False),
    ],
    ids=["one-error-kept", "two-errors-dropped", "stall-dropped", "wrong-answer-dropped", "last-never-dropped", "last-stall-kept"],
)
def test_when_a_source_is_dropped_for_a_file(how: Failure, strikes: int, others: int, expected: bool) -> None:
    assert drop_now(how, strikes, others) is expected


# -- the replica's three sources ----------------------------------------------------------------------


def _links(replica: Replica, dataset_dir: Path) -> tuple[RemoteFile, bytes]:
    """The largest published file, as three sources link it, and its bytes."""
    index: dict[str, Any] = json.loads((dataset_dir / "dataset.json").read_text())
    files = replica.server.dataset.published()
    file = max(files, key=lambda f: f.size)
    key = replica.server.dataset.prefix + file.cache_path
    file_id = next(i for i, k in index["downloads"].items() if k == key)
    etag = index["objects"][key]["etag"]
    links = (
        SourceLink("s3", f"{replica.s3_url}/{key}", etag),
        SourceLink("dandi", f"{replica.dandi_blob_url}/{blob_key(file.blob_id)}"),
        SourceLink("warehouse", f"{replica.url}/api/v2/well_known_file_download/{file_id}"),
    )
    data = (dataset_dir / "bucket" / key).read_bytes()
    assert hashlib.sha256(data).hexdigest() == file.sha256
    remote = RemoteFile(links[0].url, size=file.size, etag=etag, name=key.rsplit("/", 1)[-1], sources=links, mix=True)
    return remote, data


def _served(replica: Replica) -> dict[str, int]:
    """Body bytes each source sent for file GETs with a 206."""
    time.sleep(0.2)
    totals: dict[str, int] = {}
    for record in replica.requests():
        if record["method"] == "GET" and record["status"] == 206:
            source = _source_of(record["path"])
            totals[source] = totals.get(source, 0) + int(record["bytes"])
    return totals


def test_pieces_come_from_every_source_and_are_counted_per_source(start: Callable[..., Replica], dataset_dir: Path, client: httpx.Client,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    replica = start()
    remote, data = _links(replica, dataset_dir)
    part = tmp_path / "x.nwb.part"
    result = download(remote, part, shared=Shared(client, sleep=Sleeps()), settings=SETTINGS)
    assert part.read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    shares = {s.source: s.bytes for s in result.shares}
    assert set(shares) == {"s3", "dandi", "warehouse"}
    assert all(count > 0 for count in shares.values())
    assert sum(shares.values()) == len(data) == result.fetched
    served = _served(replica)
    for source, count in shares.items():
        assert served[source] >= count  # a piece cut short by a split sends a little more than it gives


@pytest.mark.parametrize("bad", ["s3", "dandi", "warehouse"])
def test_a_failing_source_is_dropped_and_its_pieces_go_to_the_others(start: Callable[..., Replica], dataset_dir: Path, client: httpx.Client,
                                                                     tmp_path: Path, bad: str) -> None:  # fmt: skip
    replica = start(f"error:status=503,paths={PATHS[bad]}")
    remote, data = _links(replica, dataset_dir)
    notes: list[str] = []
    listener = _Notes(notes)
    part = tmp_path / "x.nwb.part"
    shared = Shared(client, sleep=Sleeps())
    result = download(remote, part, shared=shared, settings=SETTINGS, listener=listener)
    assert part.read_bytes() == data
    shares = {s.source: s for s in result.shares}
    dropped = shares[bad].dropped
    assert shares[bad].bytes == 0 and dropped is not None and "503" in dropped
    assert sum(s.bytes for s in result.shares) == len(data)
    assert any(f"source {bad} dropped for this file" in note for note in notes)
    # A range a source just failed is asked of another one next, never of the same one again.
    time.sleep(0.2)
    gets = [r for r in replica.requests() if r["method"] == "GET" and r["range"]]
    for index, record in enumerate(gets):
        if record["status"] == 503:
            start_byte = record["range"].split("=")[1].split("-")[0]
            later = [r for r in gets[index + 1 :] if r["range"].split("=")[1].split("-")[0] == start_byte]
            assert later and _source_of(later[0]["path"]) != bad
    report = {s.source: s for s in shared.health.report()}
    assert report[bad].errors >= 2 and report[bad].bytes == 0


def test_a_stalling_source_is_dropped_and_the_file_completes(start: Callable[..., Replica], dataset_dir: Path, client: httpx.Client, tmp_path: Path) -> None:
    replica = start(f"stall:seconds=30,after=4K,paths={PATHS['dandi']}")
    remote, data = _links(replica, dataset_dir)
    part = tmp_path / "x.nwb.part"
    shared = Shared(client, sleep=Sleeps())
    result = download(remote, part, shared=shared, settings=replace(SETTINGS, stall_timeout=0.5))
    assert part.read_bytes() == data
    dropped = {s.source: s.dropped for s in result.shares}
    assert dropped.get("dandi") is not None
    assert {s.source: s for s in shared.health.report()}["dandi"].stalls >= 1


def test_every_source_failing_fails_the_file_and_keeps_the_partial(start: Callable[..., Replica], dataset_dir: Path, client: httpx.Client,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    every = "paths=/api/*|/allen-brain-observatory/*|/dandiarchive/*"
    replica = start(f"drop:after=20K,times=6,{every}", f"error:status=503,{every}")
    remote, data = _links(replica, dataset_dir)
    part = tmp_path / "x.nwb.part"
    with pytest.raises(TransferError) as failed:
        download(remote, part, shared=Shared(client, sleep=Sleeps()), settings=SETTINGS)
    assert "503" in failed.value.message
    record, _ = read_record(sidecar_path(part))
    assert record is not None and record.trusted
    on_disk = part.read_bytes()
    for a, b in record.trusted:
        assert on_disk[a:b] == data[a:b]
    assert len({o.source for o in record.origins}) >= 2


def test_without_a_published_digest_one_source_serves_the_whole_file(start: Callable[..., Replica], dataset_dir: Path, client: httpx.Client,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    replica = start()
    remote, data = _links(replica, dataset_dir)
    unmixed = RemoteFile(remote.url, size=remote.size, etag=remote.etag, name=remote.name, sources=remote.sources, mix=False)
    result = download(unmixed, tmp_path / "x.nwb.part", shared=Shared(client, sleep=Sleeps()), settings=SETTINGS)
    assert (tmp_path / "x.nwb.part").read_bytes() == data
    assert [(s.source, s.bytes) for s in result.shares] == [("s3", len(data))]
    assert set(_served(replica)) == {"s3"}


def test_without_a_published_digest_the_next_source_takes_over_from_byte_0(start: Callable[..., Replica], dataset_dir: Path, client: httpx.Client,
                                                                            tmp_path: Path) -> None:  # fmt: skip
    replica = start(f"drop:after=40K,times=4,paths={PATHS['s3']}", f"html:paths={PATHS['s3']}")
    remote, data = _links(replica, dataset_dir)
    unmixed = RemoteFile(remote.url, size=remote.size, etag=remote.etag, name=remote.name, sources=remote.sources, mix=False)
    notes: list[str] = []
    part = tmp_path / "x.nwb.part"
    result = download(unmixed, part, shared=Shared(client, sleep=Sleeps()), settings=SETTINGS, listener=_Notes(notes))
    assert part.read_bytes() == data
    shares = {s.source: s for s in result.shares}
    assert shares["dandi"].bytes == len(data)  # its bytes alone are the file: nothing of s3's stayed
    assert shares["s3"].dropped is not None and "warehouse" not in shares
    assert any("it starts again from dandi" in note for note in notes)


# -- a mixed partial survives SIGKILL -------------------------------------------------------------------

_CHILD = """
import sys, json
from ecephys_dl.client import make_client
from ecephys_dl.transfer import RemoteFile, Shared, SourceLink, TransferSettings, download
spec = json.loads(sys.argv[1])
links = tuple(SourceLink(*item) for item in spec["links"])
remote = RemoteFile(links[0].url, size=spec["size"], etag=links[0].etag, name="x.nwb", sources=links, mix=True)
with make_client(connect_timeout=5.0, read_timeout=10.0, trust_env=False) as client:
    download(remote, __import__("pathlib").Path(spec["part"]), shared=Shared(client),
             settings=TransferSettings(segment_size=32 * 1024, min_segment=8 * 1024, chunk_size=4 * 1024, connections=6))
"""


def test_a_mixed_partial_is_resumed_after_sigkill_keeping_every_sources_bytes(start: Callable[..., Replica], dataset_dir: Path,
                                                                               client: httpx.Client, tmp_path: Path) -> None:  # fmt: skip
    slow = start("rate:bps=96K")
    remote, data = _links(slow, dataset_dir)
    part = tmp_path / "x.nwb.part"
    spec = {"links": [[s.source, s.url, s.etag] for s in remote.sources], "size": remote.size, "part": str(part)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(spec)], env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    deadline = time.monotonic() + 30
    origins: set[str] = set()
    while time.monotonic() < deadline:
        record, _ = read_record(sidecar_path(part))
        if record is not None:
            origins = {o.source for o in record.origins}
            if len(origins) == 3 and sum(b - a for a, b in record.trusted) > len(data) // 3:
                break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(origins) == 3, "the killed run had not yet taken bytes from all three sources"
    record, _ = read_record(sidecar_path(part))
    assert record is not None
    kept = record.kept_origins()
    assert set(kept) == {"s3", "dandi", "warehouse"}
    on_disk = part.read_bytes()
    for ranges in kept.values():
        for a, b in ranges:
            assert on_disk[a:b] == data[a:b]
    have = sum(b - a for a, b in record.trusted)
    slow.close()

    fast = start()
    rerun, _ = _links(fast, dataset_dir)
    assert [s.url.split("/", 3)[-1] for s in rerun.sources] == [s.url.split("/", 3)[-1] for s in remote.sources]
    # The same sources at new ports: the record names the old URLs, and each origin is kept by its source's name.
    result = download(rerun, part, shared=Shared(client, sleep=Sleeps()), settings=SETTINGS)
    assert part.read_bytes() == data
    assert result.resumed_from == have
    assert result.fetched == len(data) - have
    time.sleep(0.2)
    asked = [r for r in fast.requests() if r["method"] == "GET"]
    for record_ in asked:
        a, b = (int(v) for v in record_["range"].split("=")[1].split("-"))
        assert not any(x <= a and b < y for ranges in kept.values() for x, y in ranges), f"bytes {a}-{b} were kept already"


class _Notes:
    def __init__(self, notes: list[str]) -> None:
        self.notes = notes

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        pass

    def advanced(self, name: str, nbytes: int) -> None:
        pass

    def retried(self, name: str, notice: object) -> None:
        pass

    def restarted(self, name: str, reason: str) -> None:
        self.notes.append(reason)

    def note(self, name: str, message: str) -> None:
        self.notes.append(message)



# -- finding the source that lied ------------------------------------------------------------------------


def _origin(source: str, *ranges: tuple[int, int]) -> Origin:
    return Origin(source, f"http://127.0.0.1/{source}", None, None, tuple(ranges))


@pytest.mark.parametrize(
    ("origins", "order", "expected"),
    [
        ([_origin("s3", (0, 100)), _origin("dandi", (100, 130)), _origin("warehouse", (130, 140))], ["s3", "dandi", "warehouse"],
         ["warehouse", "dandi", "s3"]),
        ([_origin("s3", (0, 50)), _origin("dandi", (50, 100))], ["dandi", "s3"], ["dandi", "s3"]),
        ([_origin("s3", (0, 50)), _origin("dandi", (50, 100))], ["s3", "dandi"], ["s3", "dandi"]),
        ([_origin("s3", (0, 100))], ["s3", "dandi"], ["s3"]),
        ([], ["s3"], []),
    ],
    ids=["fewest-bytes-first", "tie-run-order", "tie-run-order-other-way", "one-source-gave-all", "no-origins"],
)
def test_suspects_are_tried_cheapest_first(origins: list[Origin], order: list[str], expected: list[str]) -> None:
    assert suspects(origins, order) == expected


@pytest.mark.parametrize(
    ("written", "origins", "source", "left", "left_origins"),
    [
        (((0, 100),), [_origin("s3", (0, 40), (60, 100)), _origin("dandi", (40, 60))], "dandi", ((0, 40), (60, 100)), ["s3"]),
        (((0, 100),), [_origin("s3", (0, 40), (60, 100)), _origin("dandi", (40, 60))], "s3", ((40, 60),), ["dandi"]),
        (((0, 30), (50, 100)), [_origin("s3", (0, 30)), _origin("dandi", (50, 100))], "warehouse", ((0, 30), (50, 100)), ["s3", "dandi"]),
        (((0, 100),), [_origin("s3", (0, 100))], "s3", (), []),
    ],
    ids=["middle-out", "both-ends-out", "unknown-source-changes-nothing", "everything-out"],
)
def test_without_takes_one_sources_bytes_out_of_every_tier(written: tuple[tuple[int, int], ...], origins: list[Origin], source: str,
                                                           left: tuple[tuple[int, int], ...], left_origins: list[str]) -> None:  # fmt: skip
    record = Record("http://127.0.0.1/s3", 100, None, None, written, written, "boot", tuple(origins))
    out = without(record, source)
    assert out.ranges == left and out.written == left
    assert [o.source for o in out.origins] == left_origins
    assert Record.from_json(json.loads(json.dumps(out.to_json()))) == out


def test_bodies_read_straight_from_the_socket_keep_the_connections_alive(start: Callable[..., Replica], dataset_dir: Path, client: httpx.Client,
                                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Many ranged requests over two connections: the parser is told each body is done, so no connection is opened per request."""
    replica = start()
    remote, data = _links(replica, dataset_dir)
    opened: list[object] = []
    connect = socket.create_connection

    def counted(*args: Any, **kwargs: Any) -> socket.socket:
        opened.append(args[0])
        return connect(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted)
    one = RemoteFile(remote.sources[0].url, size=remote.size, etag=remote.etag, name=remote.name)
    settings = replace(SETTINGS, connections=2)
    download(one, tmp_path / "x.nwb.part", shared=Shared(client, sleep=Sleeps()), settings=settings)
    assert (tmp_path / "x.nwb.part").read_bytes() == data
    gets = [r for r in replica.requests() if r["method"] == "GET"]
    assert len(gets) >= 8 and len(opened) <= 2

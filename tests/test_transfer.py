"""The transfer engine: a part file that is byte for byte the server's file, whatever the server does.

End-to-end cases run over real HTTP against the replica serving the shared dataset, from the
warehouse and from the S3 mirror, with its faults injected; the request log shows which ranges
were asked for. Answers the replica cannot give (a wrong Content-Range, a body longer than
announced, an encoded body) come from an ``httpx.MockTransport`` server.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import FAST, Sleeps, holes

from ecephys_dl.errors import UsageError
from ecephys_dl.replica import Replica
from ecephys_dl.retry import RetryNotice, RetryPolicy
from ecephys_dl.transfer import (
    SIDECAR_FORMAT,
    RemoteFile,
    Shared,
    TransferCancelled,
    TransferError,
    TransferResult,
    TransferSettings,
    download,
    partial_bytes,
    sidecar_path,
)

pytestmark = pytest.mark.timeout(60)

# Files of the shared dataset are 250 KiB-1.1 MiB: with 128 KiB pieces and 16 KiB splits they
# really are cut up, handed out in order and split again.
SETTINGS = TransferSettings(segment_size=128 * 1024, min_segment=16 * 1024, chunk_size=8 * 1024, connections=4, stall_timeout=5.0,
                            policy=FAST)  # fmt: skip
SESSION_ID = "1026124469"  # the largest file: session_715093703.nwb
LFP_ID = "1026124481"
SOURCES = ("warehouse", "s3")


# -- helpers ---------------------------------------------------------------------------------------


@dataclass
class Events:
    """What a listener heard (list.append is atomic, so worker threads may share it)."""

    started: list[tuple[str, int | None, int]] = field(default_factory=list)
    advanced: list[int] = field(default_factory=list)
    retried: list[RetryNotice] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Listener:
    """A TransferListener that keeps every event."""

    def __init__(self) -> None:
        self.events = Events()

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        self.events.started.append((name, size, resumed_from))

    def advanced(self, name: str, nbytes: int) -> None:
        self.events.advanced.append(nbytes)

    def retried(self, name: str, notice: RetryNotice) -> None:
        self.events.retried.append(notice)

    def restarted(self, name: str, reason: str) -> None:
        self.events.restarted.append(reason)

    def note(self, name: str, message: str) -> None:
        self.events.notes.append(message)


class FakeClock:
    """An injected clock and sleep: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.slept += seconds


def _index(dataset_dir: Path) -> dict[str, Any]:
    index: dict[str, Any] = json.loads((dataset_dir / "dataset.json").read_text())
    return index


def _key(dataset_dir: Path, file_id: str) -> str:
    return str(_index(dataset_dir)["downloads"][file_id])


def _remote(replica: Replica, dataset_dir: Path, file_id: str, source: str) -> RemoteFile:
    """The file as the caller knows it: by id from the warehouse (nothing known), or from the S3 listing."""
    key = _key(dataset_dir, file_id)
    name = key.rsplit("/", 1)[-1]
    if source == "warehouse":
        return RemoteFile(f"{replica.url}/api/v2/well_known_file_download/{file_id}", name=name)
    info = _index(dataset_dir)["objects"][key]
    plain = re.fullmatch(r'"[0-9a-f]{32}"', info["etag"]) is not None  # an MD5 to check, not a multipart ETag
    return RemoteFile(f"{replica.s3_url}/{key}", size=info["size"], etag=info["etag"], name=name, md5=plain)


def _source(dataset_dir: Path, file_id: str) -> bytes:
    return (dataset_dir / "bucket" / _key(dataset_dir, file_id)).read_bytes()


def _gets(replica: Replica, count: int = 1) -> list[dict[str, Any]]:
    """The logged GETs of file bodies (waiting a moment for the log to catch up)."""
    records = replica.wait_requests(count, timeout=5.0)
    return [r for r in records if r["method"] == "GET"]


def _logged(replica: Replica, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The logged requests that ``match``, waiting a while for the first: a request is logged when
    its answer ends, and one the client cut short ends only once the server notices."""
    deadline = time.monotonic() + 10
    while not (hits := [r for r in replica.requests() if match(r)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return hits


def _hit(fault: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: record["fault"] == fault


def _starting_at(offset: int) -> Callable[[dict[str, Any]], bool]:
    return lambda record: _start(record) == offset


def _start(record: dict[str, Any]) -> int | None:
    """Where a logged request's Range starts (None: no Range)."""
    header = record.get("range")
    return int(header.split("=")[1].split("-")[0]) if header else None


BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip() if Path("/proc/sys/kernel/random/boot_id").exists() else None


def _claims(part: Path) -> list[tuple[int, int]]:
    """The ranges the record vouches for on this boot: the written ones (as a rerun keeps them), else the synced."""
    record = json.loads(sidecar_path(part).read_text())
    assert record["format"] == SIDECAR_FORMAT
    if record.get("written") and BOOT_ID is not None and record.get("boot_id") == BOOT_ID:
        return [(a, b) for a, b in record["written"]]
    return [(a, b) for a, b in record["ranges"]]


def _assert_result(result: TransferResult, part: Path, expected: bytes) -> None:
    assert part.read_bytes() == expected
    assert result.size == len(expected)
    assert result.sha256 == hashlib.sha256(expected).hexdigest()
    if result.md5 is not None:  # asked for by an S3 listing's plain ETag
        assert result.md5 == hashlib.md5(expected).hexdigest()
    assert _claims(part) == [(0, len(expected))]


@pytest.fixture
def shared(client: httpx.Client) -> Shared:
    return Shared(client, sleep=Sleeps())


@pytest.fixture
def part(tmp_path: Path) -> Path:
    return tmp_path / "x.nwb.part"


@pytest.fixture
def faulty(dataset_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start a replica with the given faults (stopped at the end of the test)."""
    started: list[Replica] = []

    def start(*faults: str, seed: int = 0) -> Replica:
        running = Replica(dataset_dir, faults=list(faults), seed=seed, log_path=tmp_path / "requests.jsonl").start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


# -- clean downloads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_clean_segmented_download(replica: Replica, dataset_dir: Path, shared: Shared, part: Path, source: str) -> None:
    """A segmented download is byte-identical, hashed right, fetched by several ranged requests without overlap."""
    listener = Listener()
    remote = _remote(replica, dataset_dir, SESSION_ID, source)
    result = download(remote, part, shared=shared, settings=SETTINGS, listener=listener)
    expected = _source(dataset_dir, SESSION_ID)
    _assert_result(result, part, expected)
    assert result.md5 == (_index(dataset_dir)["objects"][_key(dataset_dir, SESSION_ID)]["md5"] if remote.md5 else None)
    assert (result.resumed_from, result.fetched, result.restarts) == (0, len(expected), 0)
    assert sum(listener.events.advanced) == len(expected)
    assert listener.events.started == [(remote.name, len(expected), 0)]
    gets = _gets(replica, 4)
    assert len(gets) >= 4 and all(r["status"] == 206 and r["range"] for r in gets)
    starts = [_start(r) for r in gets]
    assert len(set(starts)) == len(starts)  # no range fetched twice
    # Every request names the version it wants, but the warehouse's first (nothing known yet).
    unnamed = [r for r in gets if r["if_range"] != result.etag]
    assert unnamed == [] if source == "s3" else [_start(r) for r in unnamed] in ([], [0])


@pytest.mark.parametrize("connections", [1, 2])
def test_few_connections(replica: Replica, dataset_dir: Path, shared: Shared, part: Path, connections: int) -> None:
    """With one connection the file comes in one request (hashed while streaming); the result is the same."""
    settings = replace(SETTINGS, connections=connections)
    result = download(_remote(replica, dataset_dir, LFP_ID, "s3"), part, shared=shared, settings=settings)
    _assert_result(result, part, _source(dataset_dir, LFP_ID))
    gets = _gets(replica)
    assert len(gets) >= connections
    if connections == 1:
        assert [r["range"] for r in gets] == [f"bytes=0-{result.size - 1}"]


# -- each fault alone -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_drop_resumes_at_the_dropped_offset(
    faulty: Callable[..., Replica], dataset_dir: Path, shared: Shared, part: Path, source: str
) -> None:
    """After a reset mid-body the range is asked for again from the bytes received, not from its start."""
    replica = faulty("drop:after=40K,times=1")
    result = download(_remote(replica, dataset_dir, SESSION_ID, source), part, shared=shared, settings=SETTINGS)
    _assert_result(result, part, _source(dataset_dir, SESSION_ID))
    (dropped,) = _logged(replica, _hit("drop"))
    gets = _gets(replica)
    origin = _start(dropped)
    assert origin is not None
    resumed = [s for r in gets if (s := _start(r)) is not None and origin < s <= origin + 40 * 1024]
    assert resumed, "no request resumed inside the dropped range"
    assert [_start(r) for r in gets].count(origin) == 1  # never asked again from its start


@pytest.mark.parametrize("source", SOURCES)
def test_short_body_resumes_exactly_after_it(
    faulty: Callable[..., Replica], dataset_dir: Path, shared: Shared, part: Path, source: str
) -> None:
    """A body that ends early (FIN after N bytes) is resumed at exactly origin + N; the retry is reported."""
    replica = faulty("short:bytes=30K,times=1")
    listener = Listener()
    result = download(
        _remote(replica, dataset_dir, SESSION_ID, source), part, shared=shared, settings=SETTINGS, listener=listener
    )
    _assert_result(result, part, _source(dataset_dir, SESSION_ID))
    (short,) = _logged(replica, _hit("short"))
    assert _start(short) == 0
    assert _logged(replica, _starting_at(30 * 1024))
    assert result.restarts == 0 and any("resuming at byte 30720" in n.reason for n in listener.events.retried)


@pytest.mark.parametrize("source", SOURCES)
def test_503_with_retry_after_is_waited_out(
    faulty: Callable[..., Replica], dataset_dir: Path, client: httpx.Client, part: Path, source: str
) -> None:
    """A 503 is retried after at least its Retry-After; the file completes."""
    replica = faulty("error:status=503,retry_after=2,times=2")
    sleeps = Sleeps()
    listener = Listener()
    shared = Shared(client, sleep=sleeps)
    result = download(
        _remote(replica, dataset_dir, LFP_ID, source), part, shared=shared, settings=SETTINGS, listener=listener
    )
    _assert_result(result, part, _source(dataset_dir, LFP_ID))
    assert [s for s in sleeps if s >= 2.0] and len(listener.events.retried) == 2
    assert [r["status"] for r in _gets(replica, 3)][:2] == [503, 503]


@pytest.mark.parametrize("source", SOURCES)
def test_stall_is_dropped_and_resumed(
    faulty: Callable[..., Replica], dataset_dir: Path, shared: Shared, part: Path, source: str
) -> None:
    """A connection silent for stall_timeout is dropped and its range resumed from the bytes received."""
    replica = faulty("stall:seconds=20,after=16K,times=1")
    listener = Listener()
    settings = replace(SETTINGS, stall_timeout=0.5)
    result = download(
        _remote(replica, dataset_dir, SESSION_ID, source), part, shared=shared, settings=settings, listener=listener
    )
    _assert_result(result, part, _source(dataset_dir, SESSION_ID))
    assert _logged(replica, _starting_at(16 * 1024))
    assert any("timed out" in n.reason for n in listener.events.retried)


@pytest.mark.parametrize("source", SOURCES)
def test_server_ignoring_ranges_gives_one_stream(
    faulty: Callable[..., Replica], dataset_dir: Path, shared: Shared, part: Path, source: str
) -> None:
    """A server that answers 200 to the first ranged request is read as one stream: one request, nothing discarded."""
    replica = faulty("ignore-range")
    listener = Listener()
    result = download(
        _remote(replica, dataset_dir, SESSION_ID, source), part, shared=shared, settings=SETTINGS, listener=listener
    )
    _assert_result(result, part, _source(dataset_dir, SESSION_ID))
    assert [r["status"] for r in _gets(replica)] == [200]
    assert result.restarts == 0 and any("ignores byte ranges" in n for n in listener.events.notes)


def test_ranges_ignored_midway_restart_as_one_stream(
    faulty: Callable[..., Replica], dataset_dir: Path, shared: Shared, part: Path
) -> None:
    """A 200 with the same validator after ranges worked discards the partial and fetches one plain stream."""
    replica = faulty("ignore-range:share=0.5", seed=3)  # with seed 3 the second request is hit, not the first
    listener = Listener()
    result = download(
        _remote(replica, dataset_dir, SESSION_ID, "s3"), part, shared=shared, settings=SETTINGS, listener=listener
    )
    _assert_result(result, part, _source(dataset_dir, SESSION_ID))
    assert _logged(replica, lambda r: r["status"] == 206) and _logged(replica, _hit("ignore-range"))
    assert result.restarts == 1 and "ignored a byte range" in listener.events.restarted[0]
    (plain,) = _logged(replica, lambda r: r["range"] is None)
    assert plain["status"] == 200 and plain["bytes"] == result.size


@pytest.mark.parametrize("source", SOURCES)
def test_change_midway_restarts_with_the_new_version(
    faulty: Callable[..., Replica], dataset_dir: Path, shared: Shared, part: Path, source: str
) -> None:
    """When the file changes mid-transfer the partial is discarded and the result is the new version's bytes."""
    replica = faulty("change:after=2")
    listener = Listener()
    key = _key(dataset_dir, SESSION_ID)
    result = download(
        _remote(replica, dataset_dir, SESSION_ID, source), part, shared=shared, settings=SETTINGS, listener=listener
    )
    new = replica.current_bytes(key)
    assert new != _source(dataset_dir, SESSION_ID)
    _assert_result(result, part, new)
    assert result.restarts == 1 and len(listener.events.restarted) == 1
    assert "changed" in listener.events.restarted[0]
    if source == "s3":
        assert result.etag == replica.current_object(key).etag
    # Once restarted, the ranges name the new version.
    assert _logged(replica, lambda r: r["status"] == 206 and r["if_range"] in (result.etag, result.last_modified))


@pytest.mark.parametrize("source", SOURCES)
def test_html_page_is_never_written(
    faulty: Callable[..., Replica], dataset_dir: Path, shared: Shared, part: Path, source: str
) -> None:
    """An HTML page answered instead of the file is retried; when it never stops, nothing of it reaches the part."""
    replica = faulty("html:times=2")
    result = download(_remote(replica, dataset_dir, LFP_ID, source), part, shared=shared, settings=SETTINGS)
    _assert_result(result, part, _source(dataset_dir, LFP_ID))
    assert [r["fault"] for r in _gets(replica, 3)][:2] == ["html", "html"]

    replica.set_faults(["html"])
    other = part.with_name("y.nwb.part")
    with pytest.raises(TransferError, match="HTML") as failed:
        download(_remote(replica, dataset_dir, SESSION_ID, source), other, shared=shared, settings=SETTINGS)
    assert "session_715093703.nwb" in str(failed.value)
    assert b"html" not in other.read_bytes().lower() and _claims(other) == []


def test_slow_connection_is_split(
    faulty: Callable[..., Replica], dataset_dir: Path, shared: Shared, part: Path
) -> None:
    """A connection far slower than the others loses the second half of its range to a free connection."""
    replica = faulty("rate:bps=48K,times=1")
    listener = Listener()
    result = download(
        _remote(replica, dataset_dir, SESSION_ID, "s3"), part, shared=shared, settings=SETTINGS, listener=listener
    )
    _assert_result(result, part, _source(dataset_dir, SESSION_ID))
    (slow,) = _logged(replica, _hit("rate"))
    gets = _gets(replica)
    first, last = (int(v) for v in slow["range"].split("=")[1].split("-"))
    assert any("split" in n for n in listener.events.notes)
    assert any(first < (_start(r) or -1) <= last for r in gets)  # someone took part of the slow range
    assert slow["bytes"] < last - first + 1  # and the slow connection stopped short of its end


def test_min_speed_drops_a_slow_connection(
    faulty: Callable[..., Replica], dataset_dir: Path, shared: Shared, part: Path
) -> None:
    """A connection slower than min_speed over stall_window is dropped and its range resumed where it stopped."""
    replica = faulty("rate:bps=16K,times=1")
    listener = Listener()
    settings = replace(SETTINGS, connections=1, min_speed=256 * 1024, stall_window=0.3)
    result = download(
        _remote(replica, dataset_dir, LFP_ID, "s3"), part, shared=shared, settings=settings, listener=listener
    )
    _assert_result(result, part, _source(dataset_dir, LFP_ID))
    assert any("slower than" in n.reason for n in listener.events.retried)
    (slow,) = _logged(replica, _hit("rate"))
    (resumed,) = [r for r in _gets(replica, 2) if r["fault"] is None]
    assert _start(slow) == 0 and 0 < (_start(resumed) or 0) < result.size


def test_a_mix_of_faults_over_several_files(
    faulty: Callable[..., Replica], dataset_dir: Path, client: httpx.Client, tmp_path: Path
) -> None:
    """Drops, short bodies, errors, stalls, HTML pages, ignored ranges and changes, hitting a share of the
    requests of six files fetched at once, still leave every part equal to the server's current bytes."""
    replica = faulty(
        "drop:after=12K,share=0.15",
        "short:bytes=20K,share=0.15",
        "error:status=503,share=0.15",
        "stall:seconds=10,after=8K,share=0.05",
        "html:share=0.1",
        "ignore-range:share=0.03",
        "change:after=4,share=0.3",
        seed=11,
    )
    settings = replace(SETTINGS, stall_timeout=0.3, policy=RetryPolicy(attempts=12, backoff=0.005, max_backoff=0.02))
    shared = Shared(client, max_connections=8, sleep=Sleeps())
    ids = [SESSION_ID, LFP_ID, "1026124482", "1026124489", "1026124501", "1026124509"]
    jobs = [(file_id, SOURCES[n % 2]) for n, file_id in enumerate(ids)]

    def fetch(job: tuple[str, str]) -> TransferResult:
        file_id, source = job
        return download(
            _remote(replica, dataset_dir, file_id, source),
            tmp_path / f"{file_id}.part",
            shared=shared,
            settings=settings,
        )

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(fetch, jobs))
    for (file_id, _), result in zip(jobs, results, strict=True):
        _assert_result(result, tmp_path / f"{file_id}.part", replica.current_bytes(_key(dataset_dir, file_id)))
    hit = {r["fault"] for r in replica.requests()} - {None}
    assert {"drop", "short", "error", "html"} <= hit


# -- resuming ---------------------------------------------------------------------------------------


def test_cancel_then_resume_fetches_only_the_missing_bytes(
    faulty: Callable[..., Replica], dataset_dir: Path, client: httpx.Client, part: Path
) -> None:
    """Cancel stops every connection with a consistent record; the next run fetches exactly the bytes not claimed."""
    replica = faulty("rate:bps=128K")
    remote = _remote(replica, dataset_dir, SESSION_ID, "s3")
    expected = _source(dataset_dir, SESSION_ID)
    shared = Shared(client)
    outcome: list[BaseException] = []
    settings = replace(SETTINGS, record_seconds=0.02)

    def run() -> None:
        try:
            download(remote, part, shared=shared, settings=settings)
        except BaseException as error:  # the test looks at it below
            outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sidecar_path(part).exists() and sum(b - a for a, b in _claims(part)) >= 64 * 1024:
            break
        time.sleep(0.01)
    shared.cancel()
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], TransferCancelled)
    claims = _claims(part)
    data = part.read_bytes()
    kept = sum(b - a for a, b in claims)
    assert 64 * 1024 <= kept < len(expected)
    assert all(data[a:b] == expected[a:b] for a, b in claims)

    replica.set_faults([])
    replica.clear_requests()
    # A request of the cancelled run is logged only once the server notices it was cut: not the rerun's.
    rerun_began = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    listener = Listener()
    # Pieces too big to cut or split again: each missing range is fetched by exactly one request.
    settings = replace(SETTINGS, segment_size=1 << 30, min_segment=1 << 20)
    result = download(remote, part, shared=Shared(client), settings=settings, listener=listener)
    _assert_result(result, part, expected)
    assert result.resumed_from == kept and result.fetched == len(expected) - kept
    assert listener.events.started[0][2] == kept
    missing = holes(claims, len(expected))
    fetched = sorted(((_start(r) or 0), (_start(r) or 0) + r["bytes"]) for r in _gets(replica, len(missing)) if r["time"] >= rerun_began)
    assert fetched == missing  # each missing range exactly once, nothing else


def test_cancel_wakes_connections_blocked_in_a_stall(
    faulty: Callable[..., Replica], dataset_dir: Path, client: httpx.Client, part: Path
) -> None:
    """Cancel does not wait for a stalled read to time out: the connections are cut, the bytes received
    are recorded, and no worker thread outlives the call."""
    replica = faulty("stall:seconds=30,after=8K")
    shared = Shared(client)
    outcome: list[BaseException] = []
    settings = replace(SETTINGS, stall_timeout=30.0)

    def run() -> None:
        try:
            download(_remote(replica, dataset_dir, SESSION_ID, "s3"), part, shared=shared, settings=settings)
        except BaseException as error:  # the test looks at it below
            outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.5)  # every connection is now waiting in its stall
    shared.cancel()
    worker.join(timeout=10)  # far below the 30 s stall and read timeout
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], TransferCancelled)
    assert (0, 8 * 1024) in _claims(part)
    assert not [t for t in threading.enumerate() if t.name.startswith("transfer ")]


@pytest.mark.parametrize(
    ("sidecar", "reason"),
    [
        (None, "no record"),  # a part without a record: its bytes cannot be trusted
        ("{not json", "corrupt"),  # a torn or foreign record
        (
            '{"format": "ecephys-dl-part/1", "url": "u", "size": 5, "ranges": [[0, 9]]}',
            "corrupt",
        ),  # claims past the end
    ],
)
def test_unusable_partial_is_discarded(
    replica: Replica, dataset_dir: Path, shared: Shared, part: Path, sidecar: str | None, reason: str
) -> None:
    """A partial whose record is missing or corrupt is discarded (reported), never guessed at."""
    part.write_bytes(b"\0" * 100_000)
    if sidecar is not None:
        sidecar_path(part).write_text(sidecar)
    listener = Listener()
    result = download(
        _remote(replica, dataset_dir, LFP_ID, "warehouse"), part, shared=shared, settings=SETTINGS, listener=listener
    )
    _assert_result(result, part, _source(dataset_dir, LFP_ID))
    assert result.resumed_from == 0 and len(listener.events.restarted) == 1 and reason in listener.events.restarted[0]
    assert _logged(replica, _starting_at(0))


@pytest.mark.parametrize("source", SOURCES)
def test_partial_of_another_version_is_discarded(
    replica: Replica, dataset_dir: Path, shared: Shared, part: Path, source: str
) -> None:
    """A partial recorded with an ETag the server no longer has is discarded: at once when the listing
    says so (S3), else when the server answers If-Range with the whole new file (warehouse)."""
    remote = _remote(replica, dataset_dir, LFP_ID, source)
    stale = b"\xff" * 100_000  # bytes of the "old version"
    part.write_bytes(stale)
    record = {
        "format": SIDECAR_FORMAT,
        "url": remote.url,
        "size": len(_source(dataset_dir, LFP_ID)),
        "etag": '"0-stale"',
        "last_modified": None,
        "ranges": [[0, len(stale)]],
    }
    sidecar_path(part).write_text(json.dumps(record))
    listener = Listener()
    result = download(remote, part, shared=shared, settings=SETTINGS, listener=listener)
    _assert_result(result, part, _source(dataset_dir, LFP_ID))
    assert result.resumed_from == 0 and len(listener.events.restarted) == 1
    if source == "warehouse":
        (stale,) = _logged(replica, lambda r: r["if_range"] == '"0-stale"')
        assert stale["status"] == 200
    else:
        assert all(r["if_range"] == remote.etag for r in _gets(replica))


def test_416_checks_the_length_and_restarts(replica: Replica, dataset_dir: Path, shared: Shared, part: Path) -> None:
    """A 416 (the file is shorter than recorded) is checked with a HEAD and the download starts over."""
    remote = _remote(replica, dataset_dir, LFP_ID, "warehouse")
    expected = _source(dataset_dir, LFP_ID)
    part.write_bytes(expected)
    head = httpx.head(remote.url, trust_env=False)  # the warehouse's ETag, as a first run would have learnt it
    replica.clear_requests()
    record = {
        "format": SIDECAR_FORMAT,
        "url": remote.url,
        "size": len(expected) + 50_000,
        "etag": head.headers["ETag"],
        "last_modified": None,
        "ranges": [[0, len(expected)]],
    }
    sidecar_path(part).write_text(json.dumps(record))
    listener = Listener()
    result = download(remote, part, shared=shared, settings=SETTINGS, listener=listener)
    _assert_result(result, part, expected)
    statuses = [(r["method"], r["status"]) for r in replica.wait_requests(3)]
    assert ("GET", 416) in statuses and ("HEAD", 200) in statuses
    assert result.restarts == 1 and "refused" in listener.events.restarted[0]


def test_partial_bytes_counts_only_what_the_record_vouches_for(part: Path) -> None:
    """partial_bytes is the total of the recorded ranges, and 0 for anything that would be discarded."""
    assert partial_bytes(part) == 0
    part.write_bytes(b"\0" * 1000)
    assert partial_bytes(part) == 0  # no record
    record = {"format": SIDECAR_FORMAT, "url": "u", "size": 5000, "etag": '"e"', "last_modified": None}
    sidecar_path(part).write_text(json.dumps({**record, "ranges": [[0, 300], [500, 1000]]}))
    assert partial_bytes(part) == 800
    sidecar_path(part).write_text(json.dumps({**record, "ranges": [[0, 2000]]}))
    assert partial_bytes(part) == 0  # claims more than the part holds
    sidecar_path(part).write_text("{torn")
    assert partial_bytes(part) == 0


def test_complete_partial_is_confirmed_not_fetched(
    replica: Replica, dataset_dir: Path, shared: Shared, part: Path
) -> None:
    """A part already complete under the listing's ETag is hashed without a single request."""
    remote = _remote(replica, dataset_dir, LFP_ID, "s3")
    download(remote, part, shared=shared, settings=SETTINGS)
    replica.clear_requests()
    result = download(remote, part, shared=shared, settings=SETTINGS)
    _assert_result(result, part, _source(dataset_dir, LFP_ID))
    assert result.fetched == 0 and result.resumed_from == result.size
    time.sleep(0.1)
    assert replica.requests() == []


def test_sidecar_never_claims_bytes_not_on_disk(
    faulty: Callable[..., Replica], dataset_dir: Path, client: httpx.Client, part: Path
) -> None:
    """Read while a slow transfer runs, every range the record claims already holds the file's bytes."""
    replica = faulty("rate:bps=192K")
    expected = _source(dataset_dir, SESSION_ID)
    settings = replace(SETTINGS, sync_bytes=16 * 1024, record_seconds=0.02)
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            download(_remote(replica, dataset_dir, SESSION_ID, "s3"), part, shared=Shared(client), settings=settings)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
        finally:
            done.set()

    worker = threading.Thread(target=run)
    worker.start()
    seen: set[int] = set()
    while not done.wait(0.01):
        try:
            claims = _claims(part)
        except FileNotFoundError:
            continue
        data = part.read_bytes()
        for a, b in claims:
            assert data[a:b] == expected[a:b], f"claimed bytes {a}-{b} are not the file's"
        seen.add(sum(b - a for a, b in claims))
    worker.join(timeout=10)
    assert not errors and len(seen) >= 3  # several checkpoints were seen in progress


# -- the shared limits ------------------------------------------------------------------------------


def test_rate_limit_with_an_injected_clock(
    replica: Replica, dataset_dir: Path, client: httpx.Client, part: Path
) -> None:
    """The token bucket makes a transfer take (size - burst) / rate seconds of the injected clock."""
    clock = FakeClock()
    rate = 100_000
    shared = Shared(client, limit_rate=rate, sleep=clock.sleep, clock=clock)
    settings = replace(SETTINGS, connections=1)
    result = download(_remote(replica, dataset_dir, LFP_ID, "s3"), part, shared=shared, settings=settings)
    _assert_result(result, part, _source(dataset_dir, LFP_ID))
    floor = (result.size - rate / 10) / rate
    assert floor - 1e-6 <= clock.slept <= floor + 1.0  # smooth: no long oversleep either


def test_rate_limit_is_shared_by_all_transfers(
    replica: Replica, dataset_dir: Path, client: httpx.Client, tmp_path: Path
) -> None:
    """Two files fetched at once under one limit take at least their total size / rate."""
    rate = 1 << 20
    shared = Shared(client, limit_rate=rate)
    ids = [SESSION_ID, "1026124489"]
    began = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda i: download(
                    _remote(replica, dataset_dir, i, "s3"), tmp_path / f"{i}.part", shared=shared, settings=SETTINGS
                ),
                ids,
            )
        )
    elapsed = time.monotonic() - began
    total = sum(r.size for r in results)
    assert elapsed >= (total - rate / 10) / rate * 0.95


class CountingTransport(httpx.BaseTransport):
    """Real HTTP, counting how many answers are open at once."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.open = 0
        self.peak = 0
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        stream = response.stream
        transport = self

        class Counted(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                assert isinstance(stream, httpx.SyncByteStream)
                yield from stream

            def close(self) -> None:
                with transport.lock:
                    transport.open -= 1
                assert isinstance(stream, httpx.SyncByteStream)
                stream.close()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Counted(), extensions=response.extensions
        )

    def close(self) -> None:
        self.inner.close()


def test_connection_cap_holds_across_files(faulty: Callable[..., Replica], dataset_dir: Path, tmp_path: Path) -> None:
    """However many files and connections, no more answers are open at once than the shared cap."""
    replica = faulty("rate:bps=512K")
    transport = CountingTransport()
    with httpx.Client(transport=transport, timeout=10.0) as client:
        shared = Shared(client, max_connections=3)
        ids = [SESSION_ID, "1026124489", LFP_ID]
        with ThreadPoolExecutor(3) as pool:
            list(
                pool.map(
                    lambda i: download(
                        _remote(replica, dataset_dir, i, "s3"), tmp_path / f"{i}.part", shared=shared, settings=SETTINGS
                    ),
                    ids,
                )
            )
    assert 2 <= transport.peak <= 3


# -- answers the replica cannot give -------------------------------------------------------------------

SIZE = 64 * 1024
DATA = bytes(range(256)) * (SIZE // 256)
ETAG = '"v1"'


class Stream(httpx.SyncByteStream):
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks


def _asked(request: httpx.Request) -> tuple[int, int]:
    first, _, last = request.headers["Range"].split("=")[1].partition("-")
    return int(first), int(last) if last else SIZE - 1


def _206(first: int, last: int, *, body: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """A correct 206 for bytes first..last of DATA, with ``headers`` overriding the right ones."""
    right = {"Content-Range": f"bytes {first}-{last}/{SIZE}", "Content-Length": str(last - first + 1), "ETag": ETAG}
    data = DATA[first : last + 1] if body is None else body
    return httpx.Response(206, headers={**right, **(headers or {})}, stream=Stream(data))


def _server(answer: Callable[[int, int], httpx.Response]) -> Callable[[httpx.Request], httpx.Response]:
    """A scripted server answering each ranged request from the first and last byte asked for."""
    return lambda request: answer(*_asked(request))


BAD_SERVERS: dict[str, Callable[[httpx.Request], httpx.Response]] = {
    # Content-Range starts after the byte asked for: written there, the file would be shifted.
    "range starts elsewhere": _server(lambda a, b: _206(a + 1, b)),
    # The total is another file's size.
    "other total": _server(lambda a, b: _206(a, b, headers={"Content-Range": f"bytes {a}-{b}/{SIZE + 1}"})),
    # The range goes past the last byte asked for.
    "range ends past the end asked": _server(
        lambda a, b: _206(a, b, headers={"Content-Range": f"bytes {a}-{b + 1}/{SIZE}"})
    ),
    # Content-Length disagrees with Content-Range.
    "length differs from the range": _server(lambda a, b: _206(a, b, headers={"Content-Length": "10"})),
    # A body longer than announced.
    "body longer than announced": _server(lambda a, b: _206(a, b, body=DATA[a : b + 1] + b"extra")),
    # gzip-encoded bytes are not the file's bytes.
    "encoded body": _server(lambda a, b: _206(a, b, headers={"Content-Encoding": "gzip"})),
    # An error page with status 200.
    "html page": lambda _: httpx.Response(
        200, headers={"Content-Type": "text/html"}, stream=Stream(b"<html>busy</html>")
    ),
    # A whole-file answer of the same version announcing another length than the file's.
    "whole answer of another length": lambda _: httpx.Response(
        200, headers={"ETag": ETAG, "Content-Length": "5"}, stream=Stream(b"hello")
    ),
}


@pytest.mark.parametrize("behaviour", list(BAD_SERVERS))
def test_bodies_that_are_not_the_file_are_never_written(behaviour: str, tmp_path: Path) -> None:
    """Whatever the server gets wrong, not one byte of its answer reaches the part, and the record claims none."""
    part = tmp_path / "x.part"
    with httpx.Client(transport=httpx.MockTransport(BAD_SERVERS[behaviour])) as client:
        shared = Shared(client, sleep=Sleeps())
        remote = RemoteFile("http://files.test/x.nwb", size=SIZE, etag=ETAG, name="x.nwb")
        settings = replace(SETTINGS, connections=1)
        with pytest.raises(TransferError, match=r"x\.nwb"):
            download(remote, part, shared=shared, settings=settings)
    assert part.read_bytes().strip(b"\0") == b"" and _claims(part) == []


def test_mock_server_that_behaves_gives_the_file(tmp_path: Path) -> None:
    """The same scripted server, answering correctly, gives the file (the table above fails for its fault alone)."""
    part = tmp_path / "x.part"
    with httpx.Client(transport=httpx.MockTransport(lambda r: _206(*_asked(r)))) as client:
        result = download(
            RemoteFile("http://files.test/x.nwb", SIZE, ETAG), part, shared=Shared(client), settings=SETTINGS
        )
    _assert_result(result, part, DATA)


def test_settings_are_checked() -> None:
    """Nonsense settings are a UsageError, not a hang."""
    with pytest.raises(UsageError):
        TransferSettings(connections=0)
    with pytest.raises(UsageError):
        TransferSettings(stall_timeout=0)
    with pytest.raises(UsageError):
        Shared(httpx.Client(), limit_rate=0)


# -- pieces in order, and the hash that follows them -----------------------------------------------------


def test_pieces_are_handed_out_in_file_order(faulty: Callable[..., Replica], dataset_dir: Path, client: httpx.Client, part: Path) -> None:
    """The missing bytes go out as pieces of at most segment_size, in file order: the n-th request asked
    for is within a few pieces of the n-th piece, so the part fills from the front for the hash."""
    replica = faulty("rate:bps=512K")
    settings = replace(SETTINGS, segment_size=64 * 1024, min_segment=1 << 20, connections=3)
    result = download(_remote(replica, dataset_dir, SESSION_ID, "s3"), part, shared=Shared(client), settings=settings)
    _assert_result(result, part, _source(dataset_dir, SESSION_ID))
    pieces = -(-result.size // (64 * 1024))
    gets = sorted(_gets(replica, pieces), key=lambda r: r["time"])
    ranges = [tuple(int(v) for v in r["range"].split("=")[1].split("-")) for r in gets]
    assert all(last - first + 1 <= 64 * 1024 for first, last in ranges)
    assert sorted(first for first, _ in ranges) == list(range(0, result.size, 64 * 1024))  # no splits: whole pieces
    order = [first // (64 * 1024) for first, _ in ranges]
    assert len(order) > 10 and all(abs(n - piece) < settings.connections for n, piece in enumerate(order))


def test_one_connection_streams_each_hole_in_one_request(replica: Replica, dataset_dir: Path, client: httpx.Client, part: Path) -> None:
    """With one connection nothing is cut into pieces: the file is one request, however small segment_size is."""
    settings = replace(SETTINGS, segment_size=64 * 1024, connections=1)
    result = download(_remote(replica, dataset_dir, SESSION_ID, "s3"), part, shared=Shared(client), settings=settings)
    _assert_result(result, part, _source(dataset_dir, SESSION_ID))
    assert [r["range"] for r in _gets(replica)] == [f"bytes=0-{result.size - 1}"]


@pytest.mark.parametrize("etag", ["plain", "multipart"])
@pytest.mark.parametrize("source", SOURCES)
def test_md5_only_when_there_is_one_to_compare(
    replica: Replica, dataset_dir: Path, shared: Shared, part: Path, source: str, etag: str
) -> None:
    """MD5 costs twice SHA-256's CPU: it is computed only when asked for (a plain S3 ETag, not a
    multipart one, and not from the warehouse, which states no hash), and then it is right."""
    index = _index(dataset_dir)
    file_id = next(i for i, key in index["downloads"].items() if ("-" in index["objects"][key]["etag"]) is (etag == "multipart"))
    remote = _remote(replica, dataset_dir, file_id, source)
    assert remote.md5 is (source == "s3" and etag == "plain")
    result = download(remote, part, shared=shared, settings=SETTINGS)
    expected = _source(dataset_dir, file_id)
    _assert_result(result, part, expected)
    assert result.md5 == (hashlib.md5(expected).hexdigest() if remote.md5 else None)


def test_the_hash_thread_reports_a_part_cut_short_instead_of_waiting(tmp_path: Path) -> None:
    """If the part holds fewer bytes than were written (truncated behind our back), finishing the hash
    is an error naming the part, not a wait for bytes that will never come."""
    from ecephys_dl.partial import Hasher

    part = tmp_path / "x.nwb.part"
    data = random.Random(7).randbytes(300_000)
    part.write_bytes(data)
    whole = Hasher(part, lambda: len(data), md5=True)
    try:
        assert whole.finish(len(data)) == (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
    finally:
        whole.close()
    cut = Hasher(part, lambda: len(data) + 1000, md5=False)
    try:
        with pytest.raises(OSError, match=r"x\.nwb\.part ends at byte 300000"):
            cut.finish(len(data) + 1000)
    finally:
        cut.close()

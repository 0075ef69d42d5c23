"""Running unattended: the run lock, shards, the time budget, the event log, links and status."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ecephys_dl.lock import LockHeld, RunLock
from ecephys_dl.replica import Fault, Replica
from ecephys_dl.replica.dataset import PREFIX
from ecephys_dl.shards import in_shard, parse_shard

pytestmark = pytest.mark.timeout(240)


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    return json.loads((dataset_dir / "records" / f"{model}.json").read_text())


def _args(replica: Replica, cache: Path, *rest: str) -> list[str]:
    return ["--cache-dir", str(cache), "--source", "warehouse", "--warehouse-url", replica.warehouse_url, "--retry-wait", "0.02", "--timeout", "10", *rest]


def _nwb_keys(dataset_dir: Path) -> list[str]:
    index = json.loads((dataset_dir / "dataset.json").read_text())
    return sorted(k[len(PREFIX):] for k in index["objects"] if k.endswith(".nwb"))


def _tree_is_whole(cache: Path, dataset_dir: Path) -> None:
    for relative in _nwb_keys(dataset_dir):
        assert (cache / relative).read_bytes() == (dataset_dir / "bucket" / PREFIX / relative).read_bytes(), relative


def test_a_second_fetch_exits_3_naming_the_holder_and_the_tree_ends_whole(dataset_dir: Path, tmp_path: Path) -> None:
    """Two concurrent fetches on one cache: one exits 3 at once (host, pid, since); the other finishes the tree."""
    cache = tmp_path / "cache"
    with Replica(dataset_dir, faults=[Fault.parse("rate:bps=1M,paths=*well_known_file_download*")]) as replica:
        args = [sys.executable, "-m", "ecephys_dl", *_args(replica, cache, "fetch", "--all", "--with-lfp", "--connections", "2")]
        first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lock = cache / ".ecephys-dl" / "run.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(args, capture_output=True, text=True, timeout=60)
        _, first_err = first.communicate(timeout=180)
    assert second.returncode == 3, second.stderr
    assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr and "since" in second.stderr
    assert first.returncode == 0, first_err
    _tree_is_whole(cache, dataset_dir)


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path: Path) -> None:
    """A lock left by a dead process, or by a host silent for too long, is taken over; a fresh one is not."""
    notes: list[str] = []
    lock_file = tmp_path / ".ecephys-dl" / "run.lock"
    lock_file.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "since": "2026-01-01T00:00:00Z", "heartbeat": time.time(), "command": "fetch"}))
    with RunLock(tmp_path, notes=notes.append):
        pass
    assert notes and "stale" in notes[0] and dead in notes[0]
    lock_file.write_text(json.dumps({"host": "other-node", "pid": 1, "since": "x", "heartbeat": time.time(), "command": "fetch"}))
    with pytest.raises(LockHeld) as held:
        RunLock(tmp_path).acquire()
    assert "other-node" in str(held.value) and held.value.exit_code == 3
    lock_file.write_text(json.dumps({"host": "other-node", "pid": 1, "since": "x", "heartbeat": time.time() - 3600, "command": "fetch"}))
    notes.clear()
    with RunLock(tmp_path, notes=notes.append, stale_after=600):
        pass
    assert notes and "other-node" in notes[0]


def test_wait_waits_for_the_holder(tmp_path: Path) -> None:
    """--wait: the second run waits (with a note) and gets the lock when the first releases it."""
    notes: list[str] = []
    holder = RunLock(tmp_path, command="first")
    holder.acquire()
    waiter = RunLock(tmp_path, wait=True, notes=notes.append)
    import threading

    got = threading.Event()

    def take() -> None:
        waiter.acquire()
        got.set()

    thread = threading.Thread(target=take)
    thread.start()
    time.sleep(1.5)
    assert not got.is_set() and notes and "waiting for first" in notes[0]
    holder.release()
    thread.join(timeout=10)
    assert got.is_set()
    waiter.release()


def test_shard_specs() -> None:
    """K/N with 1 <= K <= N; every file falls in exactly one shard."""
    assert parse_shard("2/4") == (2, 4)
    from ecephys_dl.errors import UsageError

    for bad in ("0/4", "5/4", "1/0", "x", "1/4/2", "-1/2", ""):
        with pytest.raises(UsageError):
            parse_shard(bad)
    paths = [f"session_{i}/probe_{j}_lfp.nwb" for i in range(20) for j in range(6)]
    for path in paths:
        assert sum(in_shard(path, (k, 4)) for k in range(1, 5)) == 1


def test_four_shards_at_once_fetch_every_file_exactly_once(dataset_dir: Path, tmp_path: Path) -> None:
    """Four shards run together fill the whole tree, each file downloaded by exactly one of them."""
    cache = tmp_path / "cache"
    with Replica(dataset_dir) as replica:
        assert subprocess.run([sys.executable, "-m", "ecephys_dl", *_args(replica, cache, "sessions", "--format", "ids")], capture_output=True, timeout=120).returncode == 0
        replica.clear_requests()
        shards = [subprocess.Popen([sys.executable, "-m", "ecephys_dl", *_args(replica, cache, "fetch", "--all", "--with-lfp", "--shard", f"{k}/4", "-q")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(1, 5)]  # fmt: skip
        codes = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in shards]
        requests = replica.wait_requests(1)
    assert all(code == 0 for code, _ in codes), codes
    _tree_is_whole(cache, dataset_dir)
    index = json.loads((dataset_dir / "dataset.json").read_text())
    downloads = [r for r in requests if r["method"] == "GET" and "well_known_file_download" in r["path"]]
    fetched = {index["downloads"][r["path"].rsplit("/", 1)[1]] for r in downloads}
    assert len(fetched) == len(_nwb_keys(dataset_dir))
    starts = [(r["path"], r["range"]) for r in downloads if r["range"] in (None, "bytes=0-") or (r["range"] or "").startswith("bytes=0-")]
    assert len(starts) == len({p for p, _ in starts}), "a file was started by two shards"


def test_max_duration_stops_cleanly_and_a_rerun_finishes(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """--max-duration: no new file after the budget, partials kept, exit 1; the next run completes the tree."""
    cache = tmp_path / "cache"
    with Replica(dataset_dir, faults=[Fault.parse("rate:bps=200K,paths=*well_known_file_download*")]) as replica:
        first = run(*_args(replica, cache, "fetch", "--all", "--with-lfp", "--max-duration", "2s", "--jobs", "2", "--format", "json"))
        assert first.code == 1
        summary = json.loads(first.out)
        assert summary["stopped_by_max_duration"] is True and summary["cancelled"] is True
        assert list(cache.rglob("*.part"))
        replica.set_faults([])
        second = run(*_args(replica, cache, "fetch", "--all", "--with-lfp"))
    assert second.code == 0, second.err
    _tree_is_whole(cache, dataset_dir)


def test_log_file_has_one_json_event_per_line(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """--log-file appends run-start, started, verified and run-end events with times, one JSON object a line."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    log = tmp_path / "logs" / "fetch.jsonl"
    result = run(*_args(replica, tmp_path / "cache", "--log-file", str(log), "fetch", str(session)))
    assert result.code == 0, result.err
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run-start" and kinds[-1] == "run-end"
    assert "started" in kinds and "verified" in kinds
    assert all(e["time"].endswith("Z") for e in events)
    run(*_args(replica, tmp_path / "cache", "--log-file", str(log), "fetch", str(session)))
    assert len(log.read_text().splitlines()) > len(events)  # appended, not rewritten


def test_links_in_every_format(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """links prints the download URLs; the aria2 form puts each file at its place in the cache layout."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    cache = tmp_path / "cache"
    urls = run(*_args(replica, cache, "links", str(session), "--with-lfp")).out.split()
    assert urls and all(u.startswith(replica.warehouse_url + "/api/v2/well_known_file_download/") for u in urls)
    aria2 = run(*_args(replica, cache, "links", str(session), "--with-lfp", "--format", "aria2")).out.splitlines()
    assert aria2[1] == f"  dir={(cache / f'session_{session}').resolve()}" and aria2[2] == f"  out=session_{session}.nwb"
    rows = json.loads(run(*_args(replica, cache, "links", str(session), "--format", "json")).out)
    assert [{k: v for k, v in row.items() if k not in ("sha256", "urls")} for row in rows] == [
        {"path": f"session_{session}/session_{session}.nwb", "url": urls[0], "kind": "session", "session_id": session, "probe_id": None, "size": None}
    ]
    assert rows[0]["urls"][0] == urls[0]
    assert run(*_args(replica, cache, "links", str(session), "--format", "csv")).out.startswith("path,url,kind,session_id,probe_id,size,sha256,urls\n")


def test_aria2c_fills_a_tree_from_links_that_verify_accepts(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """`aria2c -i` fed the aria2 links (every source's URL, the published digest) lays the files out as AllenSDK's tree,
    checked and byte for byte, which verify accepts (when aria2c is installed)."""
    import shutil

    if shutil.which("aria2c") is None:
        pytest.skip("aria2c is not installed")
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    cache = tmp_path / "cache"
    listing = tmp_path / "links.aria2"
    # Every URL on loopback: the S3 mirror and the DANDI archive are the replica's too.
    mirrors = ("--s3-url", replica.s3_url, "--dandi-url", replica.dandi_url)
    listing.write_text(run(*_args(replica, cache, *mirrors, "links", str(session), "--with-lfp", "--format", "aria2")).out)
    uri_lines = [line for line in listing.read_text().splitlines() if not line.startswith("  ")]
    assert len(uri_lines) >= 2 and all(len(line.split("\t")) == 3 for line in uri_lines)
    assert listing.read_text().count("  checksum=sha-256=") == len(uri_lines)
    done = subprocess.run(["aria2c", "-q", "--no-conf", "-i", str(listing), "--allow-overwrite=true"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    fetched = list((cache / f"session_{session}").glob("*.nwb"))
    assert len(fetched) >= 2
    for path in fetched:
        relative = path.relative_to(cache).as_posix()
        assert path.read_bytes() == (dataset_dir / "bucket" / PREFIX / relative).read_bytes()
    assert not (tmp_path / f"session_{session}").exists()  # nothing outside the cache
    checked = run(*_args(replica, cache, "verify", "--format", "json"))
    assert checked.code == 0, checked.out
    assert json.loads(checked.out)["summary"]["files"] >= 3


def test_status_reports_verified_partial_and_missing(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """status: per session, files verified, partial (a SIGTERM-ed run's) or missing, and bytes."""
    cache = tmp_path / "cache"
    sessions = [s["id"] for s in _records(dataset_dir, "EcephysSession")]
    with Replica(dataset_dir) as replica:
        assert run(*_args(replica, cache, "fetch", str(sessions[0]), "--with-lfp")).code == 0
    report = json.loads(run("--cache-dir", str(cache), "status", "--all", "--format", "json").out)
    by_id = {s["session_id"]: s for s in report["sessions"]}
    assert by_id[sessions[0]]["missing"] == 0 and by_id[sessions[0]]["verified"] >= 2
    assert by_id[sessions[1]]["missing"] >= 1 and by_id[sessions[1]]["bytes_on_disk"] == 0
    table = run("--cache-dir", str(cache), "status")
    assert table.code == 0 and str(sessions[0]) in table.out and "last verify pass" in table.out


def test_selftest_passes_every_step(tmp_path: Path) -> None:
    """`ecephys-dl selftest` runs sessions, fetch --with-lfp, verify --deep and a SIGKILL resume, all passing."""
    done = subprocess.run([sys.executable, "-m", "ecephys_dl", "selftest", "--keep", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["pass"] * 5
    assert lines[-1] == "5 passed, 0 failed"
    assert "the rerun fetched" in done.stdout

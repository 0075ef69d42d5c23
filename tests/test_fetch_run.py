"""`fetch.run` called directly, as a script or a notebook would: the same run as `ecephys-dl fetch`,
against the replica over loopback, with real files on disk and the listener's lines as evidence."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from ecephys_dl.config import Settings, Source
from ecephys_dl.delivery import FileStatus
from ecephys_dl.errors import LockHeld
from ecephys_dl.fetch import FetchOptions, prepare, run
from ecephys_dl.lock import RunLock
from ecephys_dl.plan import Action
from ecephys_dl.progress import FetchLog
from ecephys_dl.replica import Replica
from ecephys_dl.replica.dataset import PREFIX
from ecephys_dl.select import FetchRequest, SessionSelection
from ecephys_dl.shards import Shard

pytestmark = pytest.mark.timeout(240)
FAST = FetchOptions(connections=2, jobs=2, stall_timeout=2.0, reserve=0)


def _settings(replica: Replica, cache: Path, source: Source = Source.WAREHOUSE) -> Settings:
    return Settings(cache_dir=cache, sources=(source,), warehouse_url=replica.warehouse_url, s3_url=replica.s3_url, retries=3, retry_wait=0.02, timeout=10,
                    published_table=replica.dataset.published_table)


def _sessions(dataset_dir: Path) -> list[int]:
    return [r["id"] for r in json.loads((dataset_dir / "records" / "EcephysSession.json").read_text())]


@pytest.mark.parametrize("source", [Source.WAREHOUSE, Source.S3])
def test_a_run_fills_the_cache_and_reports_every_file(replica: Replica, dataset_dir: Path, tmp_path: Path, source: Source) -> None:
    """Every planned file ends fetched, byte for byte the source's; the listener heard the plan and each file."""
    session = _sessions(dataset_dir)[0]
    lines = io.StringIO()
    listener = FetchLog(lines)
    request = FetchRequest(SessionSelection(ids=(session,)), with_lfp=True)
    report = run(_settings(replica, tmp_path / "cache", source), request, FAST, listener, threading.Event())
    assert report.ok and listener.began.is_set()
    assert report.summary.outcomes and all(o.status is FileStatus.FETCHED for o in report.summary.outcomes)
    for outcome in report.summary.outcomes:
        assert (tmp_path / "cache" / outcome.relative).read_bytes() == (dataset_dir / "bucket" / PREFIX / outcome.relative).read_bytes()
        assert f"verified {outcome.relative.rsplit('/', 1)[1]}" in lines.getvalue()
    assert (tmp_path / "cache" / f"session_{session}" / f"session_{session}_analysis_metrics.csv").is_file()
    document: dict[str, Any] = report.to_json()
    assert document["fetched"] == len(report.summary.outcomes) and document["other_failures"] == []


def test_a_stop_set_before_the_transfers_cancels_every_file_and_fetches_nothing(replica: Replica, dataset_dir: Path, tmp_path: Path) -> None:
    """Setting ``stop`` makes the run end at a clean point: no file fetched, none at a final path, the report says so."""
    stop = threading.Event()
    stop.set()
    request = FetchRequest(SessionSelection(ids=tuple(_sessions(dataset_dir)[:2])))
    report = run(_settings(replica, tmp_path / "cache"), request, FAST, FetchLog(io.StringIO()), stop)
    assert not report.ok and report.summary.cancelled
    assert report.summary.bytes_fetched == 0
    assert not list((tmp_path / "cache").glob("session_*/*.nwb"))


def test_a_run_refuses_a_cache_another_run_holds(replica: Replica, dataset_dir: Path, tmp_path: Path) -> None:
    """The run takes the cache's lock first: while another holds it, it fails with LockHeld (exit 3) and fetches nothing."""
    cache = tmp_path / "cache"
    with RunLock(cache, "run", command="another fetch"), pytest.raises(LockHeld) as held:
        run(_settings(replica, cache), FetchRequest(SessionSelection(ids=(_sessions(dataset_dir)[0],))), FAST, FetchLog(io.StringIO()), threading.Event())
    assert held.value.exit_code == 3 and "another fetch" in held.value.message
    assert not list(cache.glob("session_*/*.nwb"))


def test_shards_of_a_plan_take_every_file_once(replica: Replica, dataset_dir: Path, tmp_path: Path) -> None:
    """The plans of shards 1/3, 2/3 and 3/3 split the whole plan: each file in exactly one of them."""
    settings = _settings(replica, tmp_path / "cache")
    request = FetchRequest(SessionSelection(), all_sessions=True, with_lfp=True)
    whole = [p.relative for p in prepare(settings, request, FAST).planned]
    shares = [[p.relative for p in prepare(settings, request, FetchOptions(shard=Shard(k, 3))).planned] for k in (1, 2, 3)]
    assert sorted(f for share in shares for f in share) == sorted(whole)
    assert all(p.action is Action.DOWNLOAD for p in prepare(settings, request, FAST).planned)

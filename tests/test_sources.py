"""A run's sources: `--source` parsed as a table, several sources pooled into one resolver, and whole
runs with every source of the replica over loopback (a broken or unreachable one left out, and said so)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecephys_dl.config import Settings, Source, parse_sources
from ecephys_dl.errors import SourceError, SourceUnreachable, UsageError
from ecephys_dl.fetch import FetchOptions, prepare, run
from ecephys_dl.pooled import PooledResolver, combined_error, merge
from ecephys_dl.progress import FetchLog
from ecephys_dl.replica import Fault, Replica
from ecephys_dl.select import FetchRequest, SessionSelection
from ecephys_dl.sources import resolver_for
from ecephys_dl.targets import Mirror, Resolution, SkippedSource, Target, TargetKind

pytestmark = pytest.mark.timeout(240)

S3, DANDI, WAREHOUSE = Source.S3, Source.DANDI, Source.WAREHOUSE
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there
FAST = FetchOptions(connections=2, jobs=2, stall_timeout=2.0, reserve=0)

# -- --source, as a table ---------------------------------------------------------------------------

PARSED = [
    pytest.param([], (S3, DANDI, WAREHOUSE), id="nothing-is-auto"),
    pytest.param(["auto"], (S3, DANDI, WAREHOUSE), id="auto"),
    pytest.param(["warehouse"], (WAREHOUSE,), id="one"),
    pytest.param(["s3", "dandi"], (S3, DANDI), id="repeated"),
    pytest.param(["s3,warehouse"], (S3, WAREHOUSE), id="comma-list"),
    pytest.param(["warehouse,s3", "dandi"], (WAREHOUSE, S3, DANDI), id="both-forms-in-the-order-given"),
    pytest.param(["dandi", "s3", "dandi"], (DANDI, S3), id="duplicate-keeps-its-first-place"),
    pytest.param(["warehouse", "auto"], (WAREHOUSE, S3, DANDI), id="auto-with-others-is-the-union"),
    pytest.param([" S3 , ,dandi "], (S3, DANDI), id="spaces-case-and-empty-names"),
]


@pytest.mark.parametrize(("values", "expected"), PARSED)
def test_parse_sources(values: list[str], expected: tuple[Source, ...]) -> None:
    """Repeated values and comma lists, in the order given, each source once; auto is every source, fast mirrors first."""
    assert parse_sources(values) == expected


@pytest.mark.parametrize("values", [["ftp"], ["s3,nope"], ["auto", "S4"]], ids=["unknown", "unknown-in-a-list", "unknown-beside-auto"])
def test_an_unknown_source_is_a_usage_error_naming_the_choices(values: list[str]) -> None:
    with pytest.raises(UsageError) as caught:
        parse_sources(values)
    assert all(name in caught.value.message for name in ("auto", "s3", "dandi", "warehouse")) and caught.value.exit_code == 2


def test_the_command_line_rejects_an_unknown_source(run: Any, tmp_path: Path) -> None:
    result = run("--cache-dir", str(tmp_path), "--source", "s3,ftp", "sessions")
    assert result.code == 2 and "unknown source 'ftp'" in result.err


def test_the_help_shows_the_source_lists(run: Any) -> None:
    shown = run("--help").out
    assert "--source s3 --source dandi" in shown and "--source s3,warehouse" in shown and "default: auto]" in shown


# -- merging the sources' answers, as a table --------------------------------------------------------


def _target(source: str, probe: int | None = None, size: int | None = 10) -> Target:
    kind = TargetKind.SESSION_NWB if probe is None else TargetKind.LFP_NWB
    return Target.at(kind, 1, probe, Mirror(source, f"http://{source}/{probe}", size))


MERGES = [
    pytest.param([("s3", Resolution((_target("s3"),)))], [["s3"]], (), id="one-source"),
    pytest.param([("s3", Resolution((_target("s3"),))), ("warehouse", Resolution((_target("warehouse", size=None),)))], [["s3", "warehouse"]], (),
                 id="same-file-two-mirrors-in-order"),
    pytest.param([("warehouse", Resolution((_target("warehouse"),), ((1, 5),))), ("dandi", Resolution((_target("dandi"), _target("dandi", 5))))],
                 [["warehouse", "dandi"], ["dandi"]], (), id="an-lfp-one-source-lacks-is-had-from-the-other"),
    pytest.param([("s3", Resolution((_target("s3"),), ((1, 5),))), ("dandi", Resolution((_target("dandi"),), ((1, 5),)))],
                 [["s3", "dandi"]], ((1, 5),), id="no-source-has-it-unavailable"),
]  # fmt: skip


@pytest.mark.parametrize(("answers", "sources", "unavailable"), MERGES)
def test_merge(answers: list[tuple[str, Resolution]], sources: list[list[str]], unavailable: tuple[tuple[int, int], ...]) -> None:
    """One target per file, its mirrors every source that has it in order, its own fields the first one's."""
    merged = merge(answers, [SkippedSource("x", "down")])
    assert [[m.source for m in t.mirrors] for t in merged.targets] == sources
    assert all(t.mirrors[0] == Mirror(t.source, t.url, t.size, t.etag, t.sha256) for t in merged.targets)
    assert merged.unavailable == unavailable and merged.skipped == (SkippedSource("x", "down"),)


def test_the_combined_error_is_the_first_sources_with_the_others_said() -> None:
    first = SourceUnreachable("the S3 mirror did not answer", hint="try later")
    error = combined_error([("s3", first), ("warehouse", SourceError("the warehouse is down"))])
    assert isinstance(error, SourceUnreachable) and error.hint == "try later" and error.exit_code == 5
    assert str(error) == "the S3 mirror did not answer; warehouse failed too: the warehouse is down"


# -- against the replica -------------------------------------------------------------------------------


def _settings(replica: Replica, cache: Path, *sources: Source, **urls: str) -> Settings:
    chosen = {"warehouse_url": replica.warehouse_url, "s3_url": replica.s3_url, "dandi_url": replica.dandi_url, **urls}
    return Settings(cache_dir=cache, sources=sources or (S3, DANDI, WAREHOUSE), retries=2, retry_wait=0.02, timeout=10,
                    published_table=replica.dataset.published_table, **chosen)  # fmt: skip


def _session(replica: Replica) -> int:
    return int(json.loads((replica.dataset.directory / "records" / "EcephysSession.json").read_text())[0]["id"])


def test_the_pool_merges_every_source_into_mirrors_in_the_given_order(replica: Replica, tmp_path: Path, client: httpx.Client) -> None:
    """Each file lists DANDI's blob, the warehouse's download and the S3 object, in the order asked; its own fields are DANDI's."""
    session = _session(replica)
    settings = _settings(replica, tmp_path, DANDI, WAREHOUSE, S3)
    resolver = resolver_for(settings, client)
    assert isinstance(resolver, PooledResolver) and resolver.name == "dandi+warehouse+s3"
    probes = json.loads((replica.dataset.directory / "records" / "EcephysProbe.json").read_text())
    ids = [p["id"] for p in probes if p["ecephys_session_id"] == session]
    resolution = resolver.targets([session], {session: ids})
    assert resolution.targets and not resolution.skipped
    for target in resolution.targets:
        dandi, warehouse, s3 = target.mirrors
        assert [dandi.source, warehouse.source, s3.source] == ["dandi", "warehouse", "s3"]
        assert dandi.url.startswith(replica.dandi_blob_url + "/blobs/") and dandi.sha256 is not None
        assert warehouse.url.startswith(replica.warehouse_url + "/api/v2/well_known_file_download/") and warehouse.size is None
        assert s3.url == f"{replica.s3_url}/visual-coding-neuropixels/ecephys-cache/{settings.layout.relative(target.final(settings.layout))}"
        assert (target.url, target.size, target.sha256) == (dandi.url, dandi.size, dandi.sha256) and s3.size == dandi.size
    sized = resolver.sized(list(resolution.targets))
    assert all(t.mirrors[1].size == t.size for t in sized)  # the warehouse's HEAD answers, for its own mirrors


def test_metadata_falls_back_to_the_next_source_when_the_first_fails(replica: Replica, tmp_path: Path, client: httpx.Client) -> None:
    """The S3 mirror answers 500 to every object (DANDI's tables are the mirror's): the tables come from the warehouse."""
    replica.set_faults([Fault.parse("error:status=500,paths=/allen-brain-observatory/*")])
    resolver = resolver_for(_settings(replica, tmp_path), client)
    data = resolver.table_csv("probes")
    assert data.startswith(b"id,")
    assert any(r["path"].startswith("/api/v2/data/query.json") for r in replica.requests())
    with_warehouse = resolver_for(_settings(replica, tmp_path, WAREHOUSE), client)
    assert data == with_warehouse.table_csv("probes")


def test_metadata_that_no_source_serves_raises_the_first_error_with_the_others(replica: Replica, tmp_path: Path, client: httpx.Client) -> None:
    resolver = resolver_for(_settings(replica, tmp_path, S3, WAREHOUSE, s3_url=CLOSED, warehouse_url=CLOSED), client)
    with pytest.raises(SourceUnreachable) as caught:
        resolver.table_csv("sessions")
    assert "warehouse failed too" in caught.value.message


def test_a_source_that_cannot_resolve_is_left_out_and_the_plan_says_so(replica: Replica, tmp_path: Path) -> None:
    """The warehouse at a closed port: the plan is the mirrors' alone, and names the warehouse with its reason."""
    request = FetchRequest(SessionSelection(ids=(_session(replica),)), with_lfp=True)
    prepared = prepare(_settings(replica, tmp_path / "cache", warehouse_url=CLOSED), request, FAST)
    assert [s.source for s in prepared.skipped] == ["warehouse"] and prepared.skipped[0].reason
    assert prepared.planned and all([m.source for m in p.target.mirrors] == ["s3", "dandi"] for p in prepared.planned)
    document: Any = prepared.to_json()
    assert document["skipped_sources"] == [{"source": "warehouse", "reason": prepared.skipped[0].reason}]


def test_a_run_tells_its_listener_which_source_it_left_out(replica: Replica, tmp_path: Path) -> None:
    lines = io.StringIO()
    request = FetchRequest(SessionSelection(ids=(_session(replica),)))
    report = run(_settings(replica, tmp_path / "cache", DANDI, S3, dandi_url=CLOSED), request, FAST, FetchLog(lines), threading.Event())
    assert report.ok, lines.getvalue()
    assert "source dandi: left out of this run: " in lines.getvalue()


def test_every_source_failing_fails_the_run_with_the_first_error(replica: Replica, tmp_path: Path) -> None:
    request = FetchRequest(SessionSelection(ids=(_session(replica),)))
    cache = tmp_path / "cache"
    prepare(_settings(replica, cache, WAREHOUSE), request, FAST)  # the tables in place: only the files' resolution fails
    with pytest.raises(SourceUnreachable) as caught:
        prepare(_settings(replica, cache, S3, WAREHOUSE, s3_url=CLOSED, warehouse_url=CLOSED), request, FAST)
    assert "warehouse failed too" in caught.value.message


def test_a_dry_run_by_default_lists_every_source_of_each_file(replica: Replica, tmp_path: Path, run: Any) -> None:
    """`fetch --dry-run --format json` with no --source: each file has the three sources, the fast mirrors first."""
    result = run("--cache-dir", str(tmp_path / "cache"), "--warehouse-url", replica.warehouse_url, "--s3-url", replica.s3_url, "--dandi-url", replica.dandi_url,
                 "--retry-wait", "0.02", "fetch", str(_session(replica)), "--with-lfp", "--dry-run", "--format", "json")  # fmt: skip
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["files"] and document["skipped_sources"] == []
    assert all(f["sources"] == ["s3", "dandi", "warehouse"] and f["dropped_sources"] == [] for f in document["files"])
    assert all(f["url"].startswith(replica.s3_url + "/") for f in document["files"])


def test_links_list_each_sources_url_in_the_run_s_order(replica: Replica, tmp_path: Path, run: Any) -> None:
    """--source s3,warehouse: the S3 object, the warehouse's download, then DANDI's download endpoint, built offline."""
    result = run("--cache-dir", str(tmp_path / "cache"), "--source", "s3,warehouse", "--warehouse-url", replica.warehouse_url, "--s3-url", replica.s3_url,
                 "--dandi-url", replica.dandi_url, "--retry-wait", "0.02", "links", str(_session(replica)), "--format", "json")  # fmt: skip
    assert result.code == 0, result.err
    for row in json.loads(result.out):
        s3, warehouse, dandi = row["urls"]
        assert row["url"] == s3 and s3.startswith(replica.s3_url + "/")
        assert warehouse.startswith(replica.warehouse_url + "/api/v2/") and dandi.startswith(replica.dandi_url + "/assets/")

"""The published sizes and SHA-256s as the truth of fetch, verify and status.

Pure decisions are tested as tables; the rest end to end: real files on disk (a copy of the
replica's files without ecephys-dl records, as AllenSDK leaves a cache), real fetches over
loopback from the replica, with its fault that serves the right size but other bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ecephys_dl.delivery import published_verdict
from ecephys_dl.integrity import Problem
from ecephys_dl.layout import CacheLayout, FileKind, classify
from ecephys_dl.plan import refusal
from ecephys_dl.published import PublishedFile, PublishedKind, load_published, write_published
from ecephys_dl.records import FileRecord, RecordStore
from ecephys_dl.replica import Replica
from ecephys_dl.replica.dataset import PREFIX
from ecephys_dl.status import Proof, proof_of
from ecephys_dl.targets import Target, TargetKind
from ecephys_dl.verify import FileResult, Level, Status, verify_cache
from ecephys_dl.verify.deep import judge_digest

pytestmark = pytest.mark.timeout(300)

A = "a" * 64
B = "b" * 64
C = "c" * 64
PUBLISHED = PublishedFile(kind=PublishedKind.SESSION, session_id=715093703, probe_id=None, cache_path="session_715093703/session_715093703.nwb",
                          size=1000, sha256=A, dandi_etag="0" * 32 + "-1", dandiset="000021",
                          dandi_asset_id="8bb08fa1-efc6-51a5-b79b-23bc51dca228", dandi_path="sub-1/sub-1_ses-715093703.nwb")  # fmt: skip


def _target(size: int | None = 1000, sha256: str | None = None) -> Target:
    return Target(TargetKind.SESSION_NWB, 715093703, None, "http://127.0.0.1/x", size=size, sha256=sha256)


def _record(sha256: str, size: int = 1000, **extra: Any) -> FileRecord:
    return FileRecord(path=PUBLISHED.cache_path, size=size, sha256=sha256, extra=dict(extra))


# -- the decisions, as tables -------------------------------------------------------------------

REFUSALS = [
    # announced size, announced sha256, published, accept, refused because (None: not refused)
    (1000, None, PUBLISHED, False, None),
    (None, None, PUBLISHED, False, None),  # nothing announced yet: the transfer holds it to the published size
    (1000, A, PUBLISHED, False, None),
    (999, None, PUBLISHED, False, "the source announces 999 bytes, the published size is 1000 bytes"),
    (1000, B, PUBLISHED, False, "the source announces SHA-256 bbbbbbbbbbbbbbbb..., the published one is aaaaaaaaaaaaaaaa..."),
    (999, B, PUBLISHED, False, "999 bytes"),
    (999, B, PUBLISHED, True, None),  # --accept-unpublished
    (999, B, None, False, None),  # not published: nothing to hold it against
]


@pytest.mark.parametrize(("size", "sha256", "published", "accept", "because"), REFUSALS)
def test_refusal(size: int | None, sha256: str | None, published: PublishedFile | None, accept: bool, because: str | None) -> None:
    why = refusal(_target(size, sha256), published, accept_unpublished=accept)
    if because is None:
        assert why is None
    else:
        assert why is not None and because in why and "dandiset 000021" in why


FETCHED = [
    # computed sha256, size, published, problem
    (A, 1000, PUBLISHED, None),
    (B, 1000, PUBLISHED, Problem.DIFFERS_FROM_PUBLISHED),
    (A, 999, PUBLISHED, Problem.DIFFERS_FROM_PUBLISHED),
    (B, 999, None, None),
]


@pytest.mark.parametrize(("sha256", "size", "published", "problem"), FETCHED)
def test_published_verdict(sha256: str, size: int, published: PublishedFile | None, problem: Problem | None) -> None:
    verdict = published_verdict(sha256, size, published)
    assert verdict.problem is problem
    if problem is not None:
        assert "not the published" in verdict.detail and "000021" in verdict.detail


DIGESTS = [
    # computed, record, published, status (None: nothing to say), words in the detail
    (A, None, PUBLISHED, Status.OK, "equal to the published bytes"),
    (B, None, PUBLISHED, Status.DIFFERS_FROM_PUBLISHED, "damaged, or re-released upstream"),
    (A, _record(A), PUBLISHED, Status.OK, "equal to the published bytes"),
    (B, _record(A), PUBLISHED, Status.HASH_MISMATCH, "the bytes changed"),  # changed since fetched comes first
    (B, _record(B), PUBLISHED, Status.DIFFERS_FROM_PUBLISHED, "damaged, or re-released upstream"),
    (B, _record(B, differs_from_published=True), PUBLISHED, Status.DIFFERS_FROM_PUBLISHED, "kept with --accept-unpublished"),
    (C, _record(B), PUBLISHED, Status.HASH_MISMATCH, "not the recorded"),
    (A, _record(A), None, None, ""),
    (B, _record(A), None, Status.HASH_MISMATCH, "the bytes changed"),
    (A, None, None, None, ""),
]


@pytest.mark.parametrize(("sha256", "record", "published", "status", "words"), DIGESTS)
def test_judge_digest(sha256: str, record: FileRecord | None, published: PublishedFile | None, status: Status | None, words: str) -> None:
    finding = judge_digest(sha256, record, published)
    if status is None:
        assert finding is None
    else:
        assert finding is not None and finding[0] is status and words in finding[1]


PROOFS = [
    # size on disk, record, published, proof
    (None, _record(A), PUBLISHED, Proof.ABSENT),
    (1000, None, None, Proof.UNPUBLISHED),
    (1000, None, PUBLISHED, Proof.UNPROVEN),
    (1000, _record(A, size=999), PUBLISHED, Proof.UNPROVEN),  # the record is of another version
    (1000, _record(A), PUBLISHED, Proof.EQUAL),
    (1000, _record(B), PUBLISHED, Proof.DIFFERS),
    (999, _record(A, size=999), PUBLISHED, Proof.DIFFERS),  # the published digest, but another size: not the file
]


@pytest.mark.parametrize(("size", "record", "published", "proof"), PROOFS)
def test_proof_of(size: int | None, record: FileRecord | None, published: PublishedFile | None, proof: Proof) -> None:
    assert proof_of(size, record, published) is proof


# -- verify on a copy without records -------------------------------------------------------------


def _args(replica: Replica, cache: Path, *rest: str) -> list[str]:
    return ["--cache-dir", str(cache), "--source", "warehouse", "--warehouse-url", replica.warehouse_url, "--s3-url", replica.s3_url, "--retry-wait", "0.02", *rest]


def _copy_without_records(dataset_dir: Path, cache: Path) -> list[str]:
    """The replica's NWB files in the AllenSDK tree, as a cache AllenSDK filled holds them: no records."""
    bucket = dataset_dir / "bucket" / PREFIX
    copied = []
    for path in sorted(bucket.rglob("*.nwb")):
        relative = path.relative_to(bucket).as_posix()
        place = classify(relative)
        if place is not None and place.kind in (FileKind.SESSION_NWB, FileKind.LFP_NWB):
            (cache / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, cache / relative)
            copied.append(relative)
    shutil.copyfile(bucket / "probes.csv", cache / "probes.csv")  # which probes have LFP files, for status
    return copied


def _flip_middle(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _results(out: str) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in json.loads(out)["results"]}


def test_deep_proves_an_unrecorded_copy_equal_to_the_published_bytes_and_names_a_flipped_byte(
    replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any
) -> None:
    cache = tmp_path / "cache"
    copied = _copy_without_records(dataset_dir, cache)
    published = load_published(dataset_dir / "published_files.csv")
    assert len(copied) >= 10 and all(published.by_path(p) is not None for p in copied)
    flipped = copied[len(copied) // 2]
    _flip_middle(cache / flipped)

    result = run(*_args(replica, cache, "verify", "--deep", "--format", "json"))
    assert result.code == 1
    results = {p: r for p, r in _results(result.out).items() if p.endswith(".nwb")}
    assert set(results) == set(copied)
    for relative in copied:
        row = results[relative]
        file = published.by_path(relative)
        assert file is not None and row["reference"] == f"published:{file.dandiset}"
        if relative == flipped:
            assert (row["status"], row["level"]) == ("differs-from-published", "deep")
            assert "not the archive's bytes" in row["detail"]
        else:
            assert row["status"] == "ok" and "equal to the published bytes" in row["detail"], row
    assert {r["reference"] for r in results.values()} == {"published:000021", "published:000022"}

    # The files proven equal got a record; the one that differs did not, and status says so.
    status = json.loads(run(*_args(replica, cache, "status", "--format", "json")).out)
    assert status["published_equal"] == len(copied) - 1, status
    proofs = {f["path"]: f["published"] for s in status["sessions"] for f in s["files"]}
    assert proofs[flipped] == "unproven"
    table = run(*_args(replica, cache, "status")).out
    assert f"proven equal to the published bytes: {len(copied) - 1} of" in table


def test_deep_reads_a_published_file_once_without_walking_its_chunks(dataset_dir: Path, tmp_path: Path) -> None:
    """The progress total of a deep pass over unrecorded files is their size once when they are
    published (a hash), twice when they are not (every chunk through h5py, then the hash)."""
    cache = tmp_path / "cache"
    copied = _copy_without_records(dataset_dir, cache)[:3]
    for path in cache.rglob("*.nwb"):
        if path.relative_to(cache).as_posix() not in copied:
            path.unlink()
    size = sum((cache / p).stat().st_size for p in copied)

    seen: list[int] = []
    read: list[int] = []

    class Progress:
        def total(self, nbytes: int) -> None:
            seen.append(nbytes)

        def advanced(self, nbytes: int) -> None:
            read.append(nbytes)

        def checked(self, result: FileResult) -> None: ...

    report = verify_cache(cache, level=Level.DEEP, progress=Progress(), published=load_published(dataset_dir / "published_files.csv"))
    assert report.ok and seen == [size + (cache / "probes.csv").stat().st_size]
    assert all(r.reference.startswith("published:") for r in report.results if r.path.endswith(".nwb"))
    for relative in copied:  # each adopted with the published digest
        record = RecordStore(CacheLayout(cache)).get(relative)
        assert record is not None and record.sha256 == load_published(dataset_dir / "published_files.csv").by_path(relative).sha256  # type: ignore[union-attr]

    other = tmp_path / "other"
    _copy_without_records(dataset_dir, other)
    for path in other.rglob("*.nwb"):
        if path.relative_to(other).as_posix() not in copied:
            path.unlink()
    seen.clear()
    unpublished = verify_cache(other, level=Level.DEEP, progress=Progress())
    assert unpublished.ok and seen == [2 * size + (other / "probes.csv").stat().st_size]
    assert {r.reference for r in unpublished.results} == {"none"}


def _changed_table(dataset_dir: Path, tmp_path: Path, relative: str, **changes: Any) -> Path:
    """The replica's published table with one row changed, as a re-release upstream would."""
    table = load_published(dataset_dir / "published_files.csv")
    rows = [dataclasses.replace(f, **changes) if f.cache_path == relative else f for f in table]
    path = tmp_path / "published_changed.csv"
    write_published(path, rows)
    return path


def test_quick_holds_an_unrecorded_file_to_the_published_size(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    cache = tmp_path / "cache"
    copied = _copy_without_records(dataset_dir, cache)
    target = copied[0]
    published = load_published(dataset_dir / "published_files.csv").by_path(target)
    assert published is not None
    table = _changed_table(dataset_dir, tmp_path, target, size=published.size + 8)
    result = run(*_args(replica, cache, "--published-table", str(table), "verify", "--quick", "--format", "json"))
    assert result.code == 1
    row = _results(result.out)[target]
    assert row["status"] in ("size-mismatch", "truncated") and str(published.size + 8) in row["detail"]
    assert all(r["status"] == "ok" for p, r in _results(result.out).items() if p != target and p.endswith(".nwb"))


# -- fetch against the published table -----------------------------------------------------------


def _session(dataset_dir: Path) -> int:
    records = json.loads((dataset_dir / "records" / "EcephysSession.json").read_text())
    return int(records[0]["id"])


def test_a_source_serving_other_bytes_never_reaches_the_final_path(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """Right size, other bytes (the same-size fault on every download): fetched again, then
    reported as not the published bytes; the final path never holds them."""
    session = _session(dataset_dir)
    cache = tmp_path / "cache"
    final = cache / f"session_{session}" / f"session_{session}.nwb"
    with Replica(dataset_dir, faults=["same-size:bytes=4K,paths=*well_known_file_download*"]) as replica:
        result = run(*_args(replica, cache, "fetch", str(session), "--format", "json"))
        assert result.code == 1
        summary = json.loads(result.out)
        failed = [f for f in summary["files"] if f["status"] == "failed"]
        assert [f["relative"] for f in failed] == [f"session_{session}/session_{session}.nwb"]
        assert "differs-from-published" in failed[0]["message"] and "3 times" in failed[0]["message"]
        assert "--accept-unpublished" in failed[0]["hint"]
        assert not final.exists()
        assert RecordStore(CacheLayout(cache)).get(f"session_{session}/session_{session}.nwb") is None

        # The lab accepts the re-release: the file is kept, recorded as differing, and verify says so.
        kept = run(*_args(replica, cache, "fetch", str(session), "--accept-unpublished", "--format", "json"))
        assert kept.code == 0, kept.err
        outcome = json.loads(kept.out)["files"][0]
        assert outcome["status"] == "fetched" and "kept with --accept-unpublished" in outcome["message"]
    record = RecordStore(CacheLayout(cache)).get(f"session_{session}/session_{session}.nwb")
    assert record is not None and record.extra.get("differs_from_published") is True
    original = (dataset_dir / "bucket" / PREFIX / f"session_{session}" / f"session_{session}.nwb").read_bytes()
    assert final.stat().st_size == len(original) and final.read_bytes() != original
    with Replica(dataset_dir) as replica:
        deep = run(*_args(replica, cache, "verify", "--deep", "--format", "json"))
        assert deep.code == 1
        row = _results(deep.out)[f"session_{session}/session_{session}.nwb"]
        assert row["status"] == "differs-from-published" and "kept with --accept-unpublished" in row["detail"]
        status = json.loads(run(*_args(replica, cache, "status", "--format", "json")).out)
        assert status["sessions"][0]["published_differs"] == 1

        # A fetch from a sound source puts the published bytes back only when asked to repair.
        repaired = run(*_args(replica, cache, "verify", "--deep", "--repair", "--format", "json"))
        assert repaired.code == 0, repaired.out
    assert final.read_bytes() == original


def test_a_source_announcing_another_size_is_refused_naming_both(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    session = _session(dataset_dir)
    relative = f"session_{session}/session_{session}.nwb"
    published = load_published(dataset_dir / "published_files.csv").by_path(relative)
    assert published is not None
    table = _changed_table(dataset_dir, tmp_path, relative, size=published.size + 4096)
    cache = tmp_path / "cache"
    planned = run(*_args(replica, cache, "--published-table", str(table), "fetch", str(session), "--dry-run", "--format", "json"))
    assert planned.code == 0
    rows = {f["path"]: f for f in json.loads(planned.out)["files"]}
    assert rows[relative]["action"] == "refuse" and rows[relative]["remaining"] == 0
    result = run(*_args(replica, cache, "--published-table", str(table), "fetch", str(session), "--format", "json"))
    assert result.code == 1
    failed = [f for f in json.loads(result.out)["files"] if f["status"] == "failed"]
    assert [f["relative"] for f in failed] == [relative]
    assert f"{published.size} bytes" in failed[0]["message"] and f"{published.size + 4096} bytes" in failed[0]["message"]
    assert not (cache / relative).exists() and not (cache / (relative + ".part")).exists()
    # Accepted, it is fetched as the source has it, and the record says it differs.
    accepted = run(*_args(replica, cache, "--published-table", str(table), "fetch", str(session), "--accept-unpublished", "--format", "json"))
    assert accepted.code == 0, accepted.err
    record = RecordStore(CacheLayout(cache)).get(relative)
    assert record is not None and record.extra.get("differs_from_published") is True
    quick = run(*_args(replica, cache, "--published-table", str(table), "verify", "--quick", "--format", "json"))
    assert _results(quick.out)[relative]["status"] == "differs-from-published"


def test_fetched_files_are_recorded_as_the_published_bytes(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    session = _session(dataset_dir)
    cache = tmp_path / "cache"
    assert run(*_args(replica, cache, "fetch", str(session), "--with-lfp", "-q")).code == 0
    published = load_published(dataset_dir / "published_files.csv")
    nwbs = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.nwb"))
    assert len(nwbs) > 1
    for relative in nwbs:
        record = RecordStore(CacheLayout(cache)).get(relative)
        file = published.by_path(relative)
        assert record is not None and file is not None
        assert record.sha256 == file.sha256 and record.extra == {"published": f"published:{file.dandiset}"}
    status = json.loads(run(*_args(replica, cache, "status", "--format", "json")).out)
    assert status["published_equal"] == len(nwbs) and status["published_table"] == str(dataset_dir / "published_files.csv")


# -- the published command and the table a run uses ------------------------------------------------


def test_the_shipped_table_is_used_when_no_other_is_given(run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECEPHYS_DL_PUBLISHED_TABLE")
    shown = run("--cache-dir", str(tmp_path / "cache"), "published")
    assert shown.code == 0
    assert "table: shipped" in shown.out and "files: 383 (58 session, 325 lfp)" in shown.out
    assert "dandiset 000021" in shown.out and "dandiset 000022" in shown.out
    data = json.loads(run("--cache-dir", str(tmp_path / "cache"), "published", "--format", "json").out)
    assert data["files"] == 383 and data["total_bytes"] == 144_965_967_784 + 707_553_216_911
    reference = Path(__file__).resolve().parents[1] / "ecephys_dl" / "data" / "published_files.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECEPHYS_DL_")}
    done = subprocess.run([sys.executable, "-m", "ecephys_dl", "--cache-dir", str(tmp_path / "cache"), "published", "--format", "csv"],
                          capture_output=True, env=env, timeout=120, check=True)  # fmt: skip
    assert done.stdout == reference.read_bytes()


def test_a_refreshed_copy_in_the_cache_wins_over_the_shipped_table(run: Any, dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECEPHYS_DL_PUBLISHED_TABLE")
    cache = tmp_path / "cache"
    (cache / ".ecephys-dl").mkdir(parents=True)
    shutil.copyfile(dataset_dir / "published_files.csv", cache / ".ecephys-dl" / "published_files.csv")
    data = json.loads(run("--cache-dir", str(cache), "published", "--format", "json").out)
    assert data["table"] == str(cache / ".ecephys-dl" / "published_files.csv")
    assert data["files"] == len(load_published(dataset_dir / "published_files.csv"))
    # --published-table wins over both.
    other = _changed_table(dataset_dir, tmp_path, data["published"][0]["path"], size=data["published"][0]["size"] + 1)
    again = json.loads(run("--cache-dir", str(cache), "--published-table", str(other), "published", "--format", "json").out)
    assert again["table"] == str(other) and again["total_bytes"] == data["total_bytes"] + 1


def test_a_malformed_published_table_is_a_clear_error(run: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("kind,session_id\nsession,1\n")
    result = run("--cache-dir", str(tmp_path / "cache"), "--published-table", str(bad), "verify")
    assert result.code != 0 and result.out == ""
    assert result.err.startswith(f"error: {bad}, line 1: the header is") and "Traceback" not in result.err


def _file(path: str, size: int = 10, sha256: str = A) -> PublishedFile:
    session = int(path.split("/")[0].removeprefix("session_"))
    probe = int(path.split("/")[1].removeprefix("probe_").removesuffix("_lfp.nwb")) if "probe_" in path else None
    kind = PublishedKind.LFP if probe else PublishedKind.SESSION
    dandi = f"sub-1/sub-1_ses-{session}" + (f"_probe-{probe}_ecephys" if probe else "") + ".nwb"
    return PublishedFile(kind=kind, session_id=session, probe_id=probe, cache_path=path, size=size, sha256=sha256, dandi_etag="0" * 32 + "-1",
                         dandiset="000021", dandi_asset_id="8bb08fa1-efc6-51a5-b79b-23bc51dca228", dandi_path=dandi)  # fmt: skip


COMPARISONS = [
    # before, after, added, removed, changed
    ([_file("session_1/session_1.nwb")], [_file("session_1/session_1.nwb")], (), (), ()),
    ([_file("session_1/session_1.nwb")], [_file("session_1/session_1.nwb", sha256=B)], (), (), ("session_1/session_1.nwb",)),
    ([_file("session_1/session_1.nwb")], [_file("session_1/session_1.nwb", size=11)], (), (), ("session_1/session_1.nwb",)),
    ([_file("session_1/session_1.nwb")], [_file("session_1/session_1.nwb"), _file("session_1/probe_2_lfp.nwb")], ("session_1/probe_2_lfp.nwb",), (), ()),
    ([_file("session_1/session_1.nwb"), _file("session_1/probe_2_lfp.nwb")], [_file("session_1/probe_2_lfp.nwb", sha256=C)],
     (), ("session_1/session_1.nwb",), ("session_1/probe_2_lfp.nwb",)),
]


@pytest.mark.parametrize(("before", "after", "added", "removed", "changed"), COMPARISONS)
def test_compare(before: list[PublishedFile], after: list[PublishedFile], added: tuple[str, ...], removed: tuple[str, ...], changed: tuple[str, ...]) -> None:
    from ecephys_dl.published import PublishedTable
    from ecephys_dl.refresh import compare

    changes = compare(PublishedTable(tuple(before)), PublishedTable(tuple(after)))
    assert (changes.added, changes.removed, changes.changed) == (added, removed, changed)
    assert changes.none is not (added or removed or changed)


# -- refreshing the table from the archive ----------------------------------------------------------


def _dandi_args(replica: Replica, cache: Path, *rest: str) -> list[str]:
    return ["--cache-dir", str(cache), "--dandi-url", replica.dandi_url, "--s3-url", replica.s3_url, "--retry-wait", "0.02", *rest]


def test_refresh_writes_the_archives_table_into_the_cache_which_later_runs_use(
    replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ECEPHYS_DL_PUBLISHED_TABLE")
    cache = tmp_path / "cache"
    refreshed = run(*_dandi_args(replica, cache, "published", "--refresh", "--format", "json"))
    assert refreshed.code == 0, refreshed.err
    document = json.loads(refreshed.out)
    assert document["refreshed"]["before"] == "shipped" and document["refreshed"]["dandisets"] == ["000021", "000022"]
    table = cache / ".ecephys-dl" / "published_files.csv"
    assert table.read_bytes() == (dataset_dir / "published_files.csv").read_bytes()
    assert document["table"] == str(table) and document["files"] == len(load_published(table))
    # The replica's files are not the release's: against the shipped table each is new or changed.
    changes = document["refreshed"]
    assert changes["changed"] and len(changes["changed"]) + len(changes["added"]) == document["files"]
    assert len(changes["removed"]) == 383 - len(changes["changed"])

    # Now the cache is held to the archive's table: a warehouse fetch needs no --published-table.
    session = _session(dataset_dir)
    fetched = run(*_args(replica, cache, "fetch", str(session), "--format", "json"))
    assert fetched.code == 0, fetched.err
    again = run(*_dandi_args(replica, cache, "verify", "--deep", "--refresh-published", "--format", "json"))
    assert again.code == 0, again.out
    assert "no change" in again.err
    assert all(r["reference"].startswith("published:") for p, r in _results(again.out).items() if p.endswith(".nwb"))


def test_a_malformed_listing_leaves_the_table_in_use(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECEPHYS_DL_PUBLISHED_TABLE")
    cache = tmp_path / "cache"
    assert run(*_dandi_args(replica, cache, "published", "--refresh", "--format", "json")).code == 0
    table = cache / ".ecephys-dl" / "published_files.csv"
    before = table.read_bytes()
    replica.set_faults(["asset-field:name=metadata.digest.dandi:sha2-256,value=not-a-digest"])
    try:
        result = run(*_dandi_args(replica, cache, "published", "--refresh"))
    finally:
        replica.set_faults([])
    assert result.code == 1 and result.out == ""
    first = result.err.splitlines()[0]
    assert first.startswith("error: ") and "sub-" in first and "sha2-256" in first
    assert table.read_bytes() == before


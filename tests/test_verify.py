"""Checking a cache: every kind of damage is found, by the level meant to find it, and named.

Each test works on its own copy of the replica's AllenSDK cache (real NWB files written by the
generator, real CSVs and manifest), damages it on disk, and reads the report. Records are
written as fetch writes them, with hashes computed here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import pytest

from ecephys_dl.layout import CacheLayout
from ecephys_dl.records import FileRecord, RecordStore, utc_now
from ecephys_dl.replica.dataset import PREFIX
from ecephys_dl.ui import render_verify
from ecephys_dl.verify import (
    CLEAN_AFTER,
    STATE_NAME,
    ExpectedFile,
    FileResult,
    Kind,
    Level,
    Status,
    VerifyReport,
    last_pass,
    verify_cache,
)

pytestmark = pytest.mark.timeout(120)

LEVELS = (Level.QUICK, Level.STANDARD, Level.DEEP)


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def cache(dataset_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the replica's complete AllenSDK cache."""
    target = tmp_path / "cache"
    shutil.copytree(dataset_dir / "bucket" / PREFIX, target)
    return target


def nwb_files(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.glob("session_*/*.nwb"))


def session_file(cache: Path) -> str:
    return next(r for r in nwb_files(cache) if "/session_" in r)


def record(cache: Path, relative: str, **changes: Any) -> FileRecord:
    """Write the record fetch writes for a file in place (S3 source: the ETag is its MD5)."""
    data = (cache / relative).read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    fields: dict[str, Any] = dict(path=relative, size=len(data), sha256=hashlib.sha256(data).hexdigest(), md5=md5,
                                  etag=f'"{md5}"', source_url=f"http://127.0.0.1/{relative}", fetched_at=utc_now(),
                                  verified_at=utc_now(), verified_level="fetch")  # fmt: skip
    fields.update(changes)
    made = FileRecord(**fields)
    RecordStore(CacheLayout(cache)).put(made)
    return made


def record_all(cache: Path) -> None:
    for relative in nwb_files(cache):
        record(cache, relative)


def result(report: VerifyReport, relative: str) -> FileResult:
    return next(r for r in report.results if r.path == relative)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def contiguous_offset(path: Path) -> int:
    """A byte in the middle of the raw data of a contiguous, uncompressed numeric dataset."""
    found: list[int] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and item.chunks is None and item.dtype.kind in "fiu" and item.size >= 64:
            found.append(int(item.id.get_offset()) + int(item.id.get_storage_size()) // 2)

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return found[0]


def fletcher32_offset(path: Path) -> int:
    """A byte in the middle of a chunk of a dataset stored with fletcher32 checksums."""
    found: list[int] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset) and item.fletcher32:
            info = item.id.get_chunk_info(0)
            found.append(int(info.byte_offset) + int(info.size) // 2)

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return found[0]


def same_size_lfp_pair(cache: Path) -> tuple[str, str]:
    """Two LFP files of one size (the generator gives several probes the same channel count)."""
    by_size: dict[int, list[str]] = {}
    for relative in nwb_files(cache):
        if relative.endswith("_lfp.nwb"):
            by_size.setdefault((cache / relative).stat().st_size, []).append(relative)
    return next((group[0], group[1]) for group in by_size.values() if len(group) > 1)


# -- a sound cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("recorded", [True, False], ids=["records", "no-records"])
def test_a_sound_cache_is_all_ok_at_every_level(cache: Path, level: Level, recorded: bool) -> None:
    """Every file of a whole cache is ok at every level, with or without records, and listed once."""
    if recorded:
        record_all(cache)
    report = verify_cache(cache, level=level, jobs=2)
    assert report.ok and report.summary.complete, [r for r in report.results if r.status is not Status.OK]
    assert report.summary.problems == {}
    paths = [r.path for r in report.results]
    assert paths == sorted(set(paths))
    assert set(nwb_files(cache)) <= set(paths)
    assert {"manifest.json", "sessions.csv", "probes.csv", "channels.csv", "units.csv"} <= set(paths)
    assert all(r.level is level for r in report.results)
    kinds = {r.path: r.kind for r in report.results}
    assert kinds[session_file(cache)] is Kind.SESSION_NWB and kinds["units.csv"] is Kind.CSV
    assert report.summary.bytes == sum((cache / p).stat().st_size for p in paths)


# -- damage, and the level that finds it -----------------------------------------------------------


def keep_head(n: int) -> Callable[[Path, Path], None]:
    def corrupt(cache: Path, path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: n if n >= 0 else len(data) + n])

    return corrupt


def cut_in_half(cache: Path, path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def html_page(cache: Path, path: Path) -> None:
    path.write_bytes(b"<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head><body></body></html>\n")


def random_same_size(cache: Path, path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def other_file_cut_to_size(cache: Path, path: Path) -> None:
    """A larger NWB file's bytes, cut to this file's size."""
    other = cache / session_file(cache)
    path.write_bytes(other.read_bytes()[: path.stat().st_size])


def other_file_padded_to_size(cache: Path, path: Path) -> None:
    """A smaller NWB file's bytes, padded with zeros to this file's size."""
    smaller = min((cache / r for r in nwb_files(cache)), key=lambda p: p.stat().st_size)
    data = smaller.read_bytes()
    path.write_bytes(data + bytes(path.stat().st_size - len(data)))


def same_size_other_probe(cache: Path, path: Path) -> None:
    """Another probe's LFP file of exactly this size: whole, sound, and the wrong file."""
    first, second = same_size_lfp_pair(cache)
    assert path == cache / first
    path.write_bytes((cache / second).read_bytes())


def flip_contiguous(cache: Path, path: Path) -> None:
    flip(path, contiguous_offset(path))


def flip_fletcher32(cache: Path, path: Path) -> None:
    flip(path, fletcher32_offset(path))


def delete(cache: Path, path: Path) -> None:
    path.unlink()


def rename_first_column(cache: Path, path: Path) -> None:
    text = path.read_text()
    path.write_text("session_id" + text[len("id") :])


def not_json(cache: Path, path: Path) -> None:
    path.write_text('{"manifest": [')


def manifest_020(cache: Path, path: Path) -> None:
    path.write_text(path.read_text().replace('"0.3.0"', '"0.2.0"'))


def etag_not_md5(cache: Path, path: Path) -> None:
    """The record's ETag is an MD5 that is not the file's (the file the server had was another)."""
    record(cache, cache_relative(cache, path), etag='"' + "0" * 32 + '"')


def cache_relative(cache: Path, path: Path) -> str:
    return path.relative_to(cache).as_posix()


def pick_session(cache: Path) -> str:
    return session_file(cache)


def pick_lfp(cache: Path) -> str:
    return same_size_lfp_pair(cache)[0]


def pick(name: str) -> Callable[[Path], str]:
    return lambda cache: name


@dataclass(frozen=True)
class Case:
    which: Callable[[Path], str]
    corrupt: Callable[[Path, Path], None]
    recorded: bool  # records written (as fetch does) before the damage
    status: Status
    level: Level  # the lowest level that must find it


CASES = {
    # What a write killed early leaves, at the start, in the middle, one byte short.
    "first-4KiB": Case(pick_session, keep_head(4096), True, Status.TRUNCATED, Level.QUICK),
    "first-20-bytes": Case(pick_session, keep_head(20), False, Status.TRUNCATED, Level.QUICK),
    "half": Case(pick_lfp, cut_in_half, False, Status.TRUNCATED, Level.QUICK),
    "last-byte-cut": Case(pick_session, keep_head(-1), True, Status.TRUNCATED, Level.QUICK),
    "last-byte-cut-no-record": Case(pick_session, keep_head(-1), False, Status.TRUNCATED, Level.QUICK),
    "zero-length": Case(pick_session, keep_head(0), True, Status.TRUNCATED, Level.QUICK),
    "zero-length-no-record": Case(pick_lfp, keep_head(0), False, Status.TRUNCATED, Level.QUICK),
    # A server's error page saved under the file's name.
    "html-page": Case(pick_session, html_page, True, Status.NOT_HDF5, Level.QUICK),
    "html-page-no-record": Case(pick_lfp, html_page, False, Status.NOT_HDF5, Level.QUICK),
    # Right size, wrong content.
    "random-bytes": Case(pick_lfp, random_same_size, True, Status.NOT_HDF5, Level.QUICK),
    "larger-file-cut-to-size": Case(pick_lfp, other_file_cut_to_size, True, Status.TRUNCATED, Level.QUICK),
    "smaller-file-padded": Case(pick_session, other_file_padded_to_size, True, Status.SIZE_MISMATCH, Level.QUICK),
    "another-probe-same-size": Case(pick_lfp, same_size_other_probe, True, Status.WRONG_ID, Level.STANDARD),
    # Bit rot: readable, only the hash sees it; in a checksummed chunk, h5py sees it.
    "flipped-byte-recorded": Case(pick_session, flip_contiguous, True, Status.HASH_MISMATCH, Level.DEEP),
    "flipped-fletcher32-no-record": Case(pick_session, flip_fletcher32, False, Status.UNREADABLE, Level.DEEP),
    "etag-is-another-md5": Case(pick_session, etag_not_md5, True, Status.HASH_MISMATCH, Level.DEEP),
    "recorded-but-gone": Case(pick_session, delete, True, Status.MISSING, Level.QUICK),
    # Metadata.
    "csv-cut-in-half": Case(pick("units.csv"), cut_in_half, False, Status.BAD_CSV, Level.QUICK),
    "metrics-csv-cut": Case(pick("brain_observatory_1.1_analysis_metrics.csv"), cut_in_half, False, Status.BAD_CSV, Level.QUICK),
    "csv-wrong-header": Case(pick("sessions.csv"), rename_first_column, False, Status.BAD_CSV, Level.STANDARD),
    "manifest-not-json": Case(pick("manifest.json"), not_json, False, Status.BAD_MANIFEST, Level.STANDARD),
    "manifest-0.2.0": Case(pick("manifest.json"), manifest_020, False, Status.BAD_MANIFEST, Level.STANDARD),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_damage_is_found_by_its_level_and_every_level_above(cache: Path, case: Case) -> None:
    """Each damage gets its status from the lowest level meant to find it and from every level
    above; the levels below see nothing; every other file stays ok."""
    if case.recorded:
        record_all(cache)
    relative = case.which(cache)
    case.corrupt(cache, cache / relative)
    for level in LEVELS:
        report = verify_cache(cache, level=level, jobs=2)
        found = result(report, relative)
        others = [r for r in report.results if r.path != relative and r.status is not Status.OK]
        assert others == [], f"{level}: {others}"
        if level.rank < case.level.rank:
            assert found.status is Status.OK, f"{level} should not see it: {found}"
            assert report.ok
        else:
            assert (found.status, found.level) == (case.status, case.level), f"{level}: {found}"
            assert found.detail
            assert not report.ok and report.summary.problems == {str(case.status): 1}


def test_flipped_contiguous_byte_without_a_record_cannot_be_seen(cache: Path) -> None:
    """Unchecksummed data of an unrecorded file has nothing to compare with: deep passes it.
    (With a record, the same flip is a hash mismatch: see the damage table.)"""
    relative = session_file(cache)
    flip(cache / relative, contiguous_offset(cache / relative))
    assert result(verify_cache(cache, level=Level.DEEP), relative).status is Status.OK


def test_a_file_that_fails_deep_is_not_adopted(cache: Path) -> None:
    """A fletcher32 failure leaves the file without a record, while the sound files get theirs."""
    relative = session_file(cache)
    flip(cache / relative, fletcher32_offset(cache / relative))
    report = verify_cache(cache, level=Level.DEEP)
    assert result(report, relative).status is Status.UNREADABLE
    assert "cannot be read" in result(report, relative).detail
    store = RecordStore(CacheLayout(cache))
    assert store.get(relative) is None
    assert {r.path for r in store.all()} == set(nwb_files(cache)) - {relative}


def test_deep_adopts_unrecorded_files_and_the_next_pass_compares_hashes(cache: Path) -> None:
    """A cache without records (as AllenSDK leaves it) gets records with the true hashes from a
    deep pass; a later flip in unchecksummed data is then a hash mismatch."""
    report = verify_cache(cache, level=Level.DEEP)
    assert report.ok
    store = RecordStore(CacheLayout(cache))
    for relative in nwb_files(cache):
        made = store.get(relative)
        data = (cache / relative).read_bytes()
        assert made is not None and made.verified_level == "deep" and made.extra == {"adopted": True}
        assert (made.size, made.sha256, made.md5) == (len(data), hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
        assert "recorded" in result(report, relative).detail
    assert store.get("units.csv") is None  # tables may be fetched again: never adopted
    relative = session_file(cache)
    flip(cache / relative, contiguous_offset(cache / relative))
    again = verify_cache(cache, level=Level.DEEP)
    assert result(again, relative).status is Status.HASH_MISMATCH
    assert [r.path for r in again.problems] == [relative]


def test_quick_and_standard_change_nothing_on_disk_but_the_state(cache: Path) -> None:
    """Without deep adoption or clean, a pass writes only its own state file."""
    before = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    (cache / "session_1").mkdir()  # not an id of the dataset: ignored, not touched
    for level in (Level.QUICK, Level.STANDARD):
        verify_cache(cache, level=level)
    after = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    assert set(after) - set(before) == {"session_1", ".ecephys-dl", f".ecephys-dl/{STATE_NAME}"}


# -- expected files, leftovers ---------------------------------------------------------------------


def test_expected_files_that_are_absent_are_missing(cache: Path) -> None:
    """Files a selection expects are reported missing when absent, and checked against their
    expected size when present."""
    relative = session_file(cache)
    size = (cache / relative).stat().st_size
    expected = [
        ExpectedFile("session_123/session_123.nwb", 1000),
        ExpectedFile("session_123/probe_456_lfp.nwb"),
        ExpectedFile(relative, size + 1),
    ]
    (cache / "session_123").mkdir()
    (cache / "session_123/probe_456_lfp.nwb.part").write_bytes(b"\x89HDF")
    report = verify_cache(cache, level=Level.QUICK, expected=expected)
    missing = result(report, "session_123/session_123.nwb")
    assert (missing.status, missing.kind) == (Status.MISSING, Kind.SESSION_NWB)
    lfp = result(report, "session_123/probe_456_lfp.nwb")
    assert (lfp.status, lfp.kind) == (Status.MISSING, Kind.LFP_NWB) and "partial" in lfp.detail
    assert result(report, relative).status is Status.SIZE_MISMATCH
    assert report.summary.problems == {"missing": 2, "size-mismatch": 1, "stray-partial": 1}
    with pytest.raises(ValueError):
        verify_cache(cache, expected=[ExpectedFile("../outside.nwb")])


def test_stray_partials_are_reported_and_removed_only_with_clean(cache: Path) -> None:
    """Leftovers are reported without failing the pass; clean removes the old ones and keeps
    those a running fetch may still be writing."""
    relative = nwb_files(cache)[1]
    leftovers = [f"{relative}.part", f"{relative}.part.json", ".sessions.csv.k2j3.tmp",
                 ".ecephys-dl/records/session_1/.probe_2_lfp.nwb.json.x1.tmp"]  # fmt: skip
    for name in leftovers:
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(b"partial")
    report = verify_cache(cache, level=Level.QUICK)
    assert [(r.path, r.status, r.kind) for r in report.results if r.status is not Status.OK] == [
        (name, Status.STRAY_PARTIAL, Kind.PARTIAL) for name in sorted(leftovers)
    ]
    assert report.ok and report.summary.problems == {"stray-partial": 4}
    assert all((cache / name).exists() for name in leftovers)

    kept = verify_cache(cache, level=Level.QUICK, clean=True)  # just written: a fetch may own them
    assert all((cache / name).exists() for name in leftovers)
    assert all("kept" in result(kept, name).detail for name in leftovers)

    old = os.stat(cache / relative).st_mtime - CLEAN_AFTER - 60
    for name in leftovers:
        os.utime(cache / name, (old, old))
    cleaned = verify_cache(cache, level=Level.QUICK, clean=True)
    assert all("removed" in result(cleaned, name).detail for name in leftovers)
    assert not any((cache / name).exists() for name in leftovers)
    assert (cache / relative).exists()
    assert verify_cache(cache, level=Level.QUICK).summary.problems == {}


# -- passes, time limits, state --------------------------------------------------------------------


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Ticking:
    """A progress listener that moves the clock one second per file checked."""

    clock: Clock
    total_bytes: int = 0
    read: int = 0
    checks: int = 0

    def total(self, nbytes: int) -> None:
        self.total_bytes += nbytes

    def advanced(self, nbytes: int) -> None:
        self.read += nbytes

    def checked(self, result: FileResult) -> None:
        self.checks += 1
        self.clock.now += 1.0


def test_time_limit_stops_early_and_the_next_call_continues_the_pass(cache: Path) -> None:
    """A pass stopped by its time limit reports only what it checked; the next call at that level
    checks the rest, carries the earlier results over (re-checking a file changed since), and
    completes the pass, which last_pass then shows; the call after starts a new pass."""
    clock = Clock()
    ticks = Ticking(clock)
    first = verify_cache(cache, level=Level.STANDARD, jobs=1, time_limit=5.0, clock=clock, progress=ticks)
    assert not first.summary.complete and len(first.results) == 5 and first.ok
    everything = len(verify_cache(cache, level=Level.QUICK).results)
    assert first.summary.remaining == everything - 5
    assert ticks.total_bytes == sum(r.size or 0 for r in verify_cache(cache, level=Level.QUICK).results)
    assert 0 < ticks.read < ticks.total_bytes
    progress = last_pass(cache)
    assert progress is not None and progress["in_progress"]["standard"]["checked"] == 5
    assert progress["full_passes"].get("standard") is None

    # A file checked in the first call is damaged before the second: it is checked again.
    changed = first.results[0].path
    keep_head(-1)(cache, cache / changed)
    second = verify_cache(cache, level=Level.STANDARD, jobs=2)
    assert second.summary.complete and second.summary.carried == 4 and len(second.results) == everything
    assert result(second, changed).status in (Status.TRUNCATED, Status.BAD_CSV)
    done = last_pass(cache)
    assert done is not None and done["in_progress"] == {}
    full = done["last_full_pass"]
    assert (full["level"], full["files"], full["ok"]) == ("standard", everything, everything - 1)
    assert sum(full["problems"].values()) == 1 and full["finished_at"]

    third = verify_cache(cache, level=Level.STANDARD)
    assert third.summary.complete and third.summary.carried == 0


def test_every_call_with_a_time_limit_checks_at_least_one_file(cache: Path) -> None:
    """A limit already spent when the call starts still lets it check one file, so calls
    repeated with a zero limit finish the pass, one file each."""
    everything = len(verify_cache(cache, level=Level.QUICK).results)
    calls = 0
    while True:
        calls += 1
        report = verify_cache(cache, level=Level.STANDARD, jobs=2, time_limit=0.0)
        if report.summary.complete:
            break
        assert report.summary.remaining == everything - calls
    assert calls == everything and report.ok and report.summary.carried == everything - 1


class Interrupting(Ticking):
    """Ctrl-C after a number of files."""

    def __init__(self, clock: Clock, after: int) -> None:
        super().__init__(clock)
        self.after = after

    def checked(self, result: FileResult) -> None:
        super().checked(result)
        if self.checks == self.after:
            raise KeyboardInterrupt


def test_an_interrupted_pass_keeps_what_it_checked(cache: Path) -> None:
    """Ctrl-C propagates, the files checked so far are kept in the state, and the next call at
    that level carries them over instead of checking them again."""
    with pytest.raises(KeyboardInterrupt):
        verify_cache(cache, level=Level.DEEP, jobs=1, progress=Interrupting(Clock(), after=3))
    state = last_pass(cache)
    assert state is not None and state["in_progress"]["deep"]["checked"] == 3
    again = verify_cache(cache, level=Level.DEEP, jobs=2)
    assert again.ok and again.summary.complete and again.summary.carried == 3


def test_passes_of_other_levels_do_not_disturb_one_another(cache: Path) -> None:
    """A quick pass between two parts of a deep pass leaves the deep pass's progress alone."""
    clock = Clock()
    verify_cache(cache, level=Level.DEEP, jobs=1, time_limit=3.0, clock=clock, progress=Ticking(clock))
    assert verify_cache(cache, level=Level.QUICK).summary.complete
    deep = verify_cache(cache, level=Level.DEEP)
    assert deep.summary.complete and deep.summary.carried == 3
    passes = last_pass(cache)
    assert passes is not None and set(passes["full_passes"]) == {"quick", "deep"}


def test_a_corrupt_state_file_is_ignored_and_rebuilt(cache: Path) -> None:
    """A state file that is not ours (garbage, wrong entries) never stops a pass, and is replaced."""
    state = cache / ".ecephys-dl" / STATE_NAME
    state.parent.mkdir(parents=True)
    assert last_pass(cache) is None
    for garbage in (b"\x00not json", b'{"format": "ecephys-dl-verify/1", "passes": {"standard": {"id": "x", "checked": {"a": 1}}}, "finished": []}',
                    json.dumps({"format": "ecephys-dl-verify/1", "passes": {"standard": {"id": "x", "checked": {"units.csv": {
                        "path": "units.csv", "kind": "csv", "level": "standard", "status": "ok", "signature": [1, 2]}}}},
                        "finished": {}}).encode()):  # fmt: skip
        state.write_bytes(garbage)
        report = verify_cache(cache, level=Level.STANDARD)
        assert report.ok and report.summary.complete and report.summary.carried == 0
        saved = last_pass(cache)
        assert saved is not None and saved["last_full_pass"]["level"] == "standard"


def test_the_state_file_keeps_its_format(cache: Path) -> None:
    """A state file as earlier releases wrote it is read whole and written back byte for byte."""
    from ecephys_dl.verify.state import PassState

    entry = {"path": "units.csv", "kind": "csv", "size": 10, "level": "deep", "status": "ok", "detail": "", "signature": [10, 2, 3]}
    finished = {"id": "3c563fc378ec", "level": "quick", "started_at": "2024-01-01T00:00:00Z", "finished_at": "2024-01-01T00:00:01Z",
                "files": 29, "bytes": 100, "ok": 28, "problems": {"bad-csv": 1}, "seconds": 0.008}  # fmt: skip
    data = json.dumps({"format": "ecephys-dl-verify/1",
                       "passes": {"deep": {"id": "d000f58d2b2f", "level": "deep", "started_at": "2024-01-01T00:00:02Z", "seconds": 3.0,
                                           "checked": {"units.csv": entry}}},
                       "finished": {"quick": finished}, "last": "quick"}, separators=(",", ":")).encode()  # fmt: skip
    assert PassState.from_json(data).to_json() == data
    path = cache / ".ecephys-dl" / STATE_NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    history = last_pass(cache)
    assert history is not None and history.to_json() == {
        "last_full_pass": finished, "full_passes": {"quick": finished},
        "in_progress": {"deep": {"id": "d000f58d2b2f", "started_at": "2024-01-01T00:00:02Z", "checked": 1, "problems": {}}},
    }
    assert history.last_full_pass is not None and history.last_full_pass.level is Level.QUICK


# -- speed, output, the command line ---------------------------------------------------------------


def test_quick_imports_neither_h5py_nor_pandas(cache: Path) -> None:
    """The quick level reads a few bytes per file: no HDF5 library, no CSV parser."""
    code = ("import sys; from ecephys_dl.verify import verify_cache, Level; "
            f"r = verify_cache({str(cache)!r}, level=Level.QUICK); "
            "print(r.ok, 'h5py' in sys.modules, 'pandas' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "False", "False"]


def test_render_shows_problems_and_a_summary_line(cache: Path) -> None:
    """All ok: just the summary line. Otherwise a line per problem with its status and detail."""
    out = io.StringIO()
    render_verify(verify_cache(cache, level=Level.QUICK), out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quick check of ") and " ok in " in lines[0]

    relative = session_file(cache)
    keep_head(100)(cache, cache / relative)
    clock = Clock()
    listener = Ticking(clock)
    report = verify_cache(cache, level=Level.QUICK, jobs=1, time_limit=100.0, clock=clock, progress=listener)
    out = io.StringIO()
    render_verify(report, out)
    text = out.getvalue()
    assert relative in text and "truncated" in text and "1 truncated" in text
    stopped = verify_cache(cache, level=Level.STANDARD, jobs=1, time_limit=2.0, clock=clock, progress=listener)
    out = io.StringIO()
    render_verify(stopped, out)
    assert f"stopped by the time limit: {stopped.summary.remaining} files left" in out.getvalue()


def test_progress_bar_counts_every_byte_to_read(cache: Path) -> None:
    """The terminal bar runs over a whole pass; off a terminal the listener is silent."""
    from ecephys_dl.progress import verify_progress

    stream = io.StringIO()
    with verify_progress(0, enabled=True, stream=stream) as bar:
        assert verify_cache(cache, level=Level.DEEP, progress=bar).ok
        task = bar._progress.tasks[0]
        assert task.total == task.completed > 0  # twice the NWB bytes (h5py, then the hashes), once the rest
    with verify_progress(0, stream=io.StringIO()) as silent:
        assert type(silent).__name__ == "_SilentVerify"


def test_verify_command_exit_codes(cache: Path, run: Any) -> None:
    """`ecephys-dl verify` exits 0 on a sound cache and 1 when a file is damaged, naming it."""
    done = run("--cache-dir", str(cache), "verify", "--quick")
    assert done.code == 0, done.err
    relative = session_file(cache)
    keep_head(-1)(cache, cache / relative)
    done = run("--cache-dir", str(cache), "verify", "--format", "json")
    assert done.code == 1
    data = json.loads(done.out)
    assert [(r["path"], r["status"]) for r in data["results"] if r["status"] != "ok"] == [(relative, "truncated")]

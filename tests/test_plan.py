"""What a run does with each file: :func:`decide` as one table, and :func:`plan_files` on real files."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from ecephys_dl.integrity import Problem, Verdict
from ecephys_dl.layout import CacheLayout
from ecephys_dl.partial import partial_bytes
from ecephys_dl.plan import Action, Decision, OnDisk, decide, plan_files
from ecephys_dl.records import FileRecord, RecordStore
from ecephys_dl.targets import Target, TargetKind

SIZE = 1000
URL = "http://127.0.0.1/api/v2/well_known_file_download/1"


def _target(size: int | None = SIZE) -> Target:
    return Target(TargetKind.SESSION_NWB, 7, None, URL, size)


def _record(size: int = SIZE) -> FileRecord:
    return FileRecord(path="session_7/session_7.nwb", size=size, sha256="0" * 64)


TRUNCATED = Verdict(Problem.TRUNCATED, "truncated file: size = 10, stored end of file = 1000")

DECISIONS = [
    # A link anywhere in the file's place: downloaded, so the transfer refuses it and says so.
    (OnDisk(link="/c/session_7"), _target(), _record(), Decision(Action.DOWNLOAD, 0, "/c/session_7 is a symbolic link")),
    # Nothing on disk: a plain download.
    (OnDisk(), _target(), None, Decision(Action.DOWNLOAD, 0, "")),
    # Only a partial whose record vouches for 300 bytes: resumed from them.
    (OnDisk(partial=300), _target(), None, Decision(Action.RESUME, 300, "300 B already fetched")),
    # In place, recorded by us at this size, the source agrees: skipped without reading it.
    (OnDisk(size=SIZE, whole=TRUNCATED), _target(), _record(), Decision(Action.SKIP, SIZE, "verified earlier, same size")),
    # In place and recorded, the source lists no size: the record's size is enough.
    (OnDisk(size=SIZE), _target(None), _record(), Decision(Action.SKIP, SIZE, "verified earlier, same size")),
    # Recorded at another size than the source's: not trusted, but whole at the source's size: skipped.
    (OnDisk(size=SIZE), _target(), _record(SIZE - 1), Decision(Action.SKIP, SIZE, "present, same size, whole")),
    # Put there by AllenSDK (no record), whole at the listed size: skipped.
    (OnDisk(size=SIZE), _target(), None, Decision(Action.SKIP, SIZE, "present, same size, whole")),
    # Put there by someone else, cut short: fetched again, saying why.
    (OnDisk(size=10, whole=TRUNCATED), _target(), None, Decision(Action.DOWNLOAD, 0, f"present but {TRUNCATED.detail}")),
    # Cut short, with a usable partial beside it: the partial is resumed.
    (OnDisk(size=10, whole=TRUNCATED, partial=600), _target(), None, Decision(Action.RESUME, 600, "600 B already fetched")),
    # Whole by its own superblock, but no size to compare with yet: the caller learns the size and plans again.
    (OnDisk(size=SIZE), _target(None), None, Decision(Action.DOWNLOAD, 0, "present, size unknown to compare")),
]


@pytest.mark.parametrize(("on_disk", "target", "record", "expected"), DECISIONS)
def test_decide(on_disk: OnDisk, target: Target, record: FileRecord | None, expected: Decision) -> None:
    """A file is skipped only when a record vouches for it or it is whole at a known size; a partial is resumed; else downloaded."""
    assert decide(on_disk, target, record) == expected


def _nwb(path: Path) -> None:
    """A real HDF5 file, whole: its superblock's end of file is its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.attrs["nwb_version"] = "2.2.0"


def test_plan_files_reads_the_disk_as_decide_expects(tmp_path: Path) -> None:
    """A whole AllenSDK-made file is skipped, a cut one is downloaded, a missing one with no partial is downloaded."""
    cache = CacheLayout(tmp_path)
    whole, cut, missing = (Target(TargetKind.SESSION_NWB, s, None, URL) for s in (1, 2, 3))
    _nwb(whole.final(cache))
    size = whole.final(cache).stat().st_size
    whole, cut, missing = (Target(t.kind, t.session_id, None, URL, size) for t in (whole, cut, missing))
    cut.final(cache).parent.mkdir(parents=True)
    cut.final(cache).write_bytes(whole.final(cache).read_bytes()[: size // 2])
    planned = plan_files([whole, cut, missing], cache, RecordStore(cache), partial_bytes)
    assert [(p.action, p.have) for p in planned] == [(Action.SKIP, size), (Action.DOWNLOAD, 0), (Action.DOWNLOAD, 0)]
    assert planned[1].reason.startswith("present but truncated file")

"""What a run does with each file: :func:`decide` and :func:`eligible` as tables, and :func:`plan_files` on real files."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from ecephys_dl.integrity import Problem, Verdict
from ecephys_dl.layout import CacheLayout
from ecephys_dl.partial import partial_bytes
from ecephys_dl.plan import Action, Decision, OnDisk, decide, eligible, plan_files
from ecephys_dl.published import PublishedFile, PublishedKind
from ecephys_dl.records import FileRecord, RecordStore
from ecephys_dl.targets import Mirror, Target, TargetKind

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


# -- which sources a file may be read from, against its published facts -------------------------------

A, B = "a" * 64, "b" * 64
PUBLISHED = PublishedFile(kind=PublishedKind.SESSION, session_id=7, probe_id=None, cache_path="session_7/session_7.nwb", size=SIZE, sha256=A,
                          dandi_etag="0" * 32 + "-1", dandiset="000021", dandi_asset_id="8bb08fa1-efc6-51a5-b79b-23bc51dca228",
                          dandi_path="sub-1/sub-1_ses-7.nwb")  # fmt: skip
S3 = Mirror("s3", "http://127.0.0.1/s3", SIZE, '"etag"')
DANDI = Mirror("dandi", "http://127.0.0.1/dandi", SIZE, sha256=A)
WAREHOUSE = Mirror("warehouse", URL)  # announces nothing
S3_SHORT = Mirror("s3", "http://127.0.0.1/s3", SIZE - 1)
DANDI_OTHER = Mirror("dandi", "http://127.0.0.1/dandi", SIZE, sha256=B)

ELIGIBLE = [
    # mirrors, published, accept, kept, words of each drop reason, mix
    pytest.param((S3, DANDI, WAREHOUSE), PUBLISHED, False, (S3, DANDI, WAREHOUSE), [], True, id="all-agree-mix"),
    pytest.param((S3,), PUBLISHED, False, (S3,), [], False, id="one-source-no-mix"),
    pytest.param((S3_SHORT, DANDI, WAREHOUSE), PUBLISHED, False, (DANDI, WAREHOUSE), ["source s3 announces 999 bytes, the published size is 1000 bytes"], True,
                 id="other-size-dropped"),
    pytest.param((S3, DANDI_OTHER), PUBLISHED, False, (S3,), ["source dandi announces SHA-256 bbbbbbbbbbbbbbbb..., the published one is aaaaaaaaaaaaaaaa..."],
                 False, id="other-sha256-dropped-one-left-no-mix"),
    pytest.param((S3_SHORT, DANDI_OTHER), PUBLISHED, False, (), ["source s3 announces 999 bytes", "source dandi announces SHA-256 bbbb"], False,
                 id="all-disagree-none-left"),
    pytest.param((S3_SHORT, DANDI, WAREHOUSE), PUBLISHED, True, (S3_SHORT, DANDI, WAREHOUSE), [], False, id="accept-unpublished-keeps-all-no-mix"),
    pytest.param((S3, DANDI, WAREHOUSE), PUBLISHED, True, (S3, DANDI, WAREHOUSE), [], True, id="accept-unpublished-all-agree-mix"),
    pytest.param((S3_SHORT, DANDI_OTHER), None, False, (S3_SHORT, DANDI_OTHER), [], False, id="not-published-no-mix"),
]  # fmt: skip


@pytest.mark.parametrize(("mirrors", "published", "accept", "kept", "dropped", "mix"), ELIGIBLE)
def test_eligible(mirrors: tuple[Mirror, ...], published: PublishedFile | None, accept: bool, kept: tuple[Mirror, ...], dropped: list[str], mix: bool) -> None:
    """A source announcing other bytes than the published ones is left out, saying which and both values; pieces are
    mixed only between several sources of a published file, none announcing other bytes."""
    found = eligible(mirrors, published, accept_unpublished=accept)
    assert found.kept == kept and found.mix is mix
    assert len(found.dropped) == len(dropped) and all(words in why for words, why in zip(dropped, found.dropped, strict=True))


class _Published:
    """A published table of one file."""

    def by_path(self, relative: str) -> PublishedFile | None:
        return PUBLISHED if relative == PUBLISHED.cache_path else None


PLANS = [
    # mirrors, accept, action, sources of the planned target, mix
    pytest.param((S3_SHORT, DANDI, WAREHOUSE), False, Action.DOWNLOAD, ["dandi", "warehouse"], True, id="dropped-source-not-carried"),
    pytest.param((S3_SHORT, DANDI_OTHER), False, Action.REFUSE, ["s3", "dandi"], False, id="all-disagree-refused"),
    pytest.param((S3_SHORT, DANDI_OTHER), True, Action.DOWNLOAD, ["s3", "dandi"], False, id="accepted-not-mixed"),
]


@pytest.mark.parametrize(("mirrors", "accept", "action", "sources", "mix"), PLANS)
def test_plan_files_carries_only_the_kept_sources(tmp_path: Path, mirrors: tuple[Mirror, ...], accept: bool, action: Action, sources: list[str], mix: bool) -> None:
    """The planned target's own fields are its first kept source's; a refusal names each source's difference."""
    cache = CacheLayout(tmp_path)
    target = Target(TargetKind.SESSION_NWB, 7, None, "x").with_mirrors(mirrors)
    (planned,) = plan_files([target], cache, RecordStore(cache), partial_bytes, _Published(), accept_unpublished=accept)  # type: ignore[arg-type]
    assert planned.action is action and [m.source for m in planned.target.mirrors] == sources and planned.mix is mix
    assert planned.target.mirrors[0] == Mirror(planned.target.source, planned.target.url, planned.target.size, planned.target.etag, planned.target.sha256)
    if action is Action.REFUSE:
        assert "source s3 announces 999 bytes" in planned.reason and "source dandi announces SHA-256" in planned.reason and "not the published file" in planned.reason
        assert len(planned.dropped_mirrors) == 2

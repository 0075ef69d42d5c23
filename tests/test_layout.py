"""The AllenSDK cache layout and manifest.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecephys_dl.errors import ManifestError
from ecephys_dl.layout import CacheLayout, CachePath, FileKind, classify, final_relative, is_leftover, write_atomic
from ecephys_dl.manifest import check_manifest, ensure_manifest, manifest_bytes, repair_manifest

DATA = Path(__file__).parent / "data"


def test_manifest_is_byte_for_byte_allensdks() -> None:
    """manifest.json is what AllenSDK 2.16 writes: 2-space JSON, entries in order, no trailing newline."""
    assert manifest_bytes() == (DATA / "manifest.json").read_bytes()


def test_paths_follow_the_allensdk_tree(tmp_path: Path) -> None:
    """Session and probe files live under session_<id>/ with AllenSDK's names."""
    cache = CacheLayout(tmp_path)
    assert cache.session_nwb(715093703) == tmp_path / "session_715093703" / "session_715093703.nwb"
    assert cache.probe_lfp_nwb(715093703, 729445648) == tmp_path / "session_715093703" / "probe_729445648_lfp.nwb"
    assert cache.session_metrics(715093703).name == "session_715093703_analysis_metrics.csv"
    assert cache.typewise_metrics("functional_connectivity").name == "functional_connectivity_analysis_metrics.csv"
    assert cache.table("units") == tmp_path / "units.csv"
    assert cache.manifest == tmp_path / "manifest.json"
    assert cache.relative(cache.natural_scene(3)) == "natural_scene_templates/natural_scene_3.tiff"


@pytest.mark.parametrize("bad", [0, -5, True, "715093703", 1.5, "1/../../x"])
def test_paths_refuse_anything_but_positive_integer_ids(tmp_path: Path, bad: object) -> None:
    """A path is built only from a real positive integer id, never from text a server sent."""
    with pytest.raises(ValueError):
        CacheLayout(tmp_path).session_nwb(bad)  # type: ignore[arg-type]


def test_unknown_table_names_are_refused(tmp_path: Path) -> None:
    """Only the four metadata tables and two session types have names in the cache."""
    with pytest.raises(ValueError):
        CacheLayout(tmp_path).table("../etc/passwd")
    with pytest.raises(ValueError):
        CacheLayout(tmp_path).typewise_metrics("natural_movies")


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    """An atomic write leaves the new bytes at the path and nothing else in the directory."""
    target = tmp_path / "sub" / "file.csv"
    write_atomic(target, b"old")
    write_atomic(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.csv"]


S, P = 715093703, 729445648
BIG = 9_223_372_036_854_775_807  # 19 digits: the largest id a name may carry


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("manifest.json", CachePath(FileKind.MANIFEST)),  # the manifest at the root
        ("units.csv", CachePath(FileKind.TABLE_CSV, name="units")),  # one of the four metadata tables
        ("sessions.csv", CachePath(FileKind.TABLE_CSV, name="sessions")),  # another
        ("brain_observatory_1.1_analysis_metrics.csv", CachePath(FileKind.TYPEWISE_METRICS_CSV, name="brain_observatory_1.1")),  # typewise metrics
        ("functional_connectivity_analysis_metrics.csv", CachePath(FileKind.TYPEWISE_METRICS_CSV, name="functional_connectivity")),  # the other type
        (f"session_{S}/session_{S}.nwb", CachePath(FileKind.SESSION_NWB, session_id=S)),  # a session file in its folder
        (f"session_{S}/probe_{P}_lfp.nwb", CachePath(FileKind.LFP_NWB, session_id=S, probe_id=P)),  # an LFP file in its session's folder
        (f"session_{S}/session_{S}_analysis_metrics.csv", CachePath(FileKind.SESSION_METRICS_CSV, session_id=S)),  # a session's metrics
        ("natural_movie_templates/natural_movie_1.h5", CachePath(FileKind.STIMULUS_TEMPLATE, name="natural_movie_1")),  # a movie template
        ("natural_scene_templates/natural_scene_0.tiff", CachePath(FileKind.STIMULUS_TEMPLATE, name="natural_scene_0")),  # scene 0 exists
        (f"session_{BIG}/session_{BIG}.nwb", CachePath(FileKind.SESSION_NWB, session_id=BIG)),  # 19 digits is the most an id has
        (f"session_{BIG}0/session_{BIG}0.nwb", None),  # 20 digits is too many
        ("session_0/session_0.nwb", None),  # 0 is not an id
        ("session_0123/session_0123.nwb", None),  # no leading zero
        ("session_\u0661\u0662/session_\u0661\u0662.nwb", None),  # only ASCII digits (these are Arabic-Indic)
        ("session_-5/session_-5.nwb", None),  # no sign
        ("session_1/session_2.nwb", None),  # the session file of another session
        ("session_1/session_2_analysis_metrics.csv", None),  # the metrics of another session
        (f"session_{S}/probe_0_lfp.nwb", None),  # 0 is not a probe id
        (f"session_{S}/probe_{P}_lfp.nwb.part", None),  # a partial download is not the file
        (f"session_{S}/probe_{P}_lfp.nwb.part.json", None),  # nor is its state
        (f"session_{S}.nwb", None),  # a session file outside its folder
        (f"x/session_{S}/session_{S}.nwb", None),  # or deeper in the tree
        (f"session_{S}/session_{S}.NWB", None),  # names are case-sensitive
        ("units.csv/units.csv", None),  # a table name is only a table at the root
        (f"session_{S}/units.csv", None),  # and not inside a session folder
        ("natural_movie_templates/natural_scene_1.tiff", None),  # a scene in the movies' folder
        ("natural_movie_1.h5", None),  # a template outside its folder
        ("natural_scene_templates/natural_scene_01.tiff", None),  # no leading zero in a template's number
        ("visual_coding_analysis_metrics.csv", None),  # not a session type
        ("manifest.json.bad-20240101T000000", None),  # a manifest kept aside
        (".ecephys-dl/records/units.csv.json", None),  # ecephys-dl's own records
        (".ecephys-dl/verify-state.json", None),  # and its pass state
        ("", None),  # no name at all
    ],
)
def test_classify_reads_the_allensdk_tree_back(relative: str, expected: CachePath | None) -> None:
    """Every name of the AllenSDK tree is read back into its kind and ids; every other name is None."""
    assert classify(relative) == expected
    assert CacheLayout(Path("/cache")).classify(relative) == expected


def test_classify_reads_back_what_the_layout_builds(tmp_path: Path) -> None:
    """The names the layout builds are the names classify accepts, with the same ids."""
    cache = CacheLayout(tmp_path)
    assert classify(cache.relative(cache.session_nwb(S))) == CachePath(FileKind.SESSION_NWB, session_id=S)
    assert classify(cache.relative(cache.probe_lfp_nwb(S, P))) == CachePath(FileKind.LFP_NWB, session_id=S, probe_id=P)
    assert classify(cache.relative(cache.session_metrics(S))) == CachePath(FileKind.SESSION_METRICS_CSV, session_id=S)
    assert classify(cache.relative(cache.typewise_metrics("functional_connectivity"))) is not None
    assert classify(cache.relative(cache.natural_movie(3))) == CachePath(FileKind.STIMULUS_TEMPLATE, name="natural_movie_3")
    assert classify(cache.relative(cache.manifest)) == CachePath(FileKind.MANIFEST)
    assert CachePath(FileKind.LFP_NWB, session_id=S, probe_id=P).nwb_id == P
    assert CachePath(FileKind.SESSION_NWB, session_id=S).nwb_id == S
    assert CachePath(FileKind.SESSION_METRICS_CSV, session_id=S).nwb_id is None


def test_ecephys_dls_own_names(tmp_path: Path) -> None:
    """Partials, their state, records, locks and leftovers have one spelling each."""
    cache = CacheLayout(tmp_path)
    final = cache.session_nwb(S)
    assert cache.part(final) == final.with_name(final.name + ".part")
    assert cache.sidecar(cache.part(final)) == final.with_name(final.name + ".part.json")
    assert cache.state_dir == tmp_path / ".ecephys-dl"
    assert cache.records_dir == tmp_path / ".ecephys-dl" / "records"
    assert cache.record(f"session_{S}/session_{S}.nwb") == tmp_path / ".ecephys-dl" / "records" / f"session_{S}" / f"session_{S}.nwb.json"
    assert cache.lock_path("run") == tmp_path / ".ecephys-dl" / "run.lock"
    assert cache.manifest_aside("20240101T000000") == tmp_path / "manifest.json.bad-20240101T000000"
    for bad in ("../x", "/etc/passwd", "a//b", ""):
        with pytest.raises(ValueError):
            cache.record(bad)
    assert final_relative("a/x.nwb.part") == final_relative("a/x.nwb.part.json") == "a/x.nwb"
    assert final_relative("a/x.nwb") == "a/x.nwb" and final_relative(".part") == ".part"
    assert all(is_leftover(n) for n in ("x.nwb.part", "x.nwb.part.json", ".units.csv.k2j3.tmp"))
    assert not any(is_leftover(n) for n in ("x.nwb", "units.tmp", "x.json"))


def test_session_ids_are_the_session_folders(tmp_path: Path) -> None:
    """Only directories named session_<id> count; files and other names do not."""
    for name in ("session_5", "session_12", "session_0", "session_007", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "session_9").write_bytes(b"")
    assert CacheLayout(tmp_path).session_ids() == [5, 12]
    assert CacheLayout(tmp_path / "absent").session_ids() == []


def test_a_manifest_is_checked_ensured_and_repaired_keeping_the_old_one(tmp_path: Path) -> None:
    """ensure writes AllenSDK's manifest once and never replaces one; a foreign or corrupt one is
    refused; repair puts AllenSDK's in its place and keeps the old one beside it."""
    cache = CacheLayout(tmp_path)
    assert repair_manifest(cache) is None and cache.manifest.read_bytes() == manifest_bytes()
    assert ensure_manifest(cache) is False
    check_manifest(cache.manifest)
    for bad in (b"{not json", b'{"manifest": 3}', b'{"manifest": [{"type": "manifest_version", "value": "0.2.0"}]}'):
        cache.manifest.write_bytes(bad)
        with pytest.raises(ManifestError):
            check_manifest(cache.manifest)
        with pytest.raises(ManifestError):
            ensure_manifest(cache)
    aside = repair_manifest(cache)
    assert aside is not None and aside.parent == tmp_path and aside.name.startswith("manifest.json.bad-")
    assert aside.read_bytes() == bad and cache.manifest.read_bytes() == manifest_bytes()
    cache.manifest.unlink()
    assert ensure_manifest(cache) is True and cache.manifest.read_bytes() == manifest_bytes()

"""The AllenSDK cache layout and manifest.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecephys_dl.layout import CacheLayout, manifest_bytes, write_atomic

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

"""The generated replica dataset: the real dataset's shape, AllenSDK's CSVs, and sound files.

Expected values here are computed from the generated records independently of the code that
writes the bucket (no use of ``ecephys_dl.tables``), so a mistake there shows up as a difference.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import pytest

from ecephys_dl.replica.dataset import PREFIX, generate_records, make_dataset, parse_scale

DATA = Path(__file__).parent / "data"


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    return json.loads((dataset_dir / "records" / f"{model}.json").read_text())


def _cache(dataset_dir: Path) -> Path:
    return dataset_dir / "bucket" / PREFIX


def _passes(unit: dict[str, Any]) -> bool:
    return (
        unit["quality"] == "good"
        and unit["amplitude_cutoff"] is not None
        and unit["amplitude_cutoff"] <= 0.1
        and unit["presence_ratio"] is not None
        and unit["presence_ratio"] >= 0.95
        and unit["isi_violations"] is not None
        and unit["isi_violations"] <= 0.5
    )


@pytest.fixture(scope="module")
def full_records() -> dict[str, list[dict[str, Any]]]:
    """The records of a full-scale dataset (no files)."""
    return generate_records("full", seed=1)


def test_full_scale_has_the_real_datasets_counts(full_records: dict[str, list[dict[str, Any]]]) -> None:
    """scale=full gives 58 sessions (32/26), 332 probes (7 without LFP), 123,224 channels, 99,180 units, 40,010 passing."""
    records = full_records
    sessions = records["EcephysSession"]
    assert len(sessions) == 58
    assert Counter(s["stimulus_name"] for s in sessions) == {"brain_observatory_1.1": 32, "functional_connectivity": 26}
    assert len(records["EcephysProbe"]) == 332
    assert sum(1 for p in records["EcephysProbe"] if not p["use_lfp_data"]) == 7
    assert len(records["EcephysChannel"]) == 123_224
    assert len(records["EcephysUnit"]) == 99_180
    assert sum(map(_passes, records["EcephysUnit"])) == 40_010
    per_session = Counter(p["ecephys_session_id"] for p in records["EcephysProbe"])
    assert set(per_session.values()) == {5, 6}
    lfp_files = [f for f in records["WellKnownFile"] if f["attachable_type"] == "EcephysProbe"]
    assert len(lfp_files) == 332 - 7


def test_small_scale_covers_every_kind_of_case() -> None:
    """Both session types and sexes, all four genotypes (one recorded as null), a probe without LFP."""
    records = generate_records("small", seed=1)
    assert {s["stimulus_name"] for s in records["EcephysSession"]} == {"brain_observatory_1.1", "functional_connectivity"}
    donors = records["Donor"]
    assert {d["sex"] for d in donors} == {"M", "F"}
    genotypes = {d["full_genotype"] for d in donors}
    assert None in genotypes
    for kind in ("Sst", "Vip", "Pvalb", "wt"):
        assert any(g and g.startswith(kind) for g in genotypes), kind
    assert any(not p["use_lfp_data"] for p in records["EcephysProbe"])
    assert {p["name"] for p in records["EcephysProbe"]} == {f"probe{c}" for c in "ABCDEF"}


def test_generation_is_deterministic_from_the_seed() -> None:
    """The same seed gives the same records; another seed gives others."""
    assert generate_records("tiny", seed=3) == generate_records("tiny", seed=3)
    assert generate_records("tiny", seed=3)["EcephysUnit"] != generate_records("tiny", seed=4)["EcephysUnit"]


def test_quality_metrics_sit_on_both_sides_of_every_threshold() -> None:
    """Units exactly at each default threshold pass; units just beyond, noise units and missing metrics fail."""
    units = generate_records("tiny", seed=1)["EcephysUnit"]
    for name, value in (("amplitude_cutoff", 0.1), ("presence_ratio", 0.95), ("isi_violations", 0.5)):
        at = [u for u in units if u[name] == value]
        assert at and all(_passes(u) for u in at), name
    assert any((u["amplitude_cutoff"] is not None and 0.1 < u["amplitude_cutoff"] < 0.11) or u["amplitude_cutoff"] == 0.5 for u in units)
    assert any(u["presence_ratio"] is not None and u["presence_ratio"] < 0.95 for u in units)
    assert any(u["isi_violations"] is not None and u["isi_violations"] > 0.5 for u in units)
    noise = [u for u in units if u["quality"] == "noise"]
    assert noise and not any(map(_passes, noise))
    assert any(u["isi_violations"] is None for u in units)
    fraction = sum(map(_passes, units)) / len(units)
    assert 0.35 < fraction < 0.45  # 40,010 of 99,180 in the real dataset


def test_tutorial_filter_finds_sessions(full_records: dict[str, list[dict[str, Any]]]) -> None:
    """The tutorial's example (male, Sst, brain_observatory_1.1, VISl) selects its sessions at full scale."""
    records = full_records
    structures = {s["id"]: s["acronym"] for s in records["Structure"]}
    probe_session = {p["id"]: p["ecephys_session_id"] for p in records["EcephysProbe"]}
    acronyms: dict[int, set[str | None]] = {}
    for channel in records["EcephysChannel"]:
        acronyms.setdefault(probe_session[channel["ecephys_probe_id"]], set()).add(structures.get(channel["ecephys_structure_id"]))
    specimens = {s["id"]: s for s in records["Specimen"]}
    donors = {d["id"]: d for d in records["Donor"]}
    chosen = [
        s["id"]
        for s in records["EcephysSession"]
        if donors[specimens[s["specimen_id"]]["donor_id"]]["sex"] == "M"
        and "Sst" in (donors[specimens[s["specimen_id"]]["donor_id"]]["full_genotype"] or "wt")
        and s["stimulus_name"] == "brain_observatory_1.1"
        and "VISl" in acronyms[s["id"]]
    ]
    assert {715093703, 719161530, 756029989} <= set(chosen)
    assert all(None in a for a in acronyms.values())  # every session has channels outside the brain ("nan")


def test_bucket_is_a_whole_allensdk_cache(dataset_dir: Path) -> None:
    """The bucket holds manifest.json, the six metadata CSVs, and every session's and LFP file at AllenSDK's paths."""
    cache = _cache(dataset_dir)
    assert (cache / "manifest.json").read_bytes() == (DATA / "manifest.json").read_bytes()
    for name in ("sessions", "probes", "channels", "units", "brain_observatory_1.1_analysis_metrics", "functional_connectivity_analysis_metrics"):
        assert (cache / f"{name}.csv").is_file(), name
    probes = _records(dataset_dir, "EcephysProbe")
    for session in _records(dataset_dir, "EcephysSession"):
        sid = session["id"]
        assert (cache / f"session_{sid}" / f"session_{sid}.nwb").is_file()
        assert (cache / f"session_{sid}" / f"session_{sid}_analysis_metrics.csv").is_file()
        for probe in (p for p in probes if p["ecephys_session_id"] == sid):
            assert (cache / f"session_{sid}" / f"probe_{probe['id']}_lfp.nwb").is_file() == probe["use_lfp_data"]


def test_index_matches_the_files_and_the_s3_etag_rule(dataset_dir: Path) -> None:
    """dataset.json lists every object with its true size and MD5, and the ETag S3 would give it."""
    index = json.loads((dataset_dir / "dataset.json").read_text())
    part_size = index["part_size"]
    bucket = dataset_dir / "bucket"
    on_disk = sorted(p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file())
    assert sorted(index["objects"]) == on_disk
    multipart = 0
    for key, meta in index["objects"].items():
        data = (bucket / key).read_bytes()
        assert meta["size"] == len(data)
        assert meta["md5"] == hashlib.md5(data).hexdigest()
        if len(data) > part_size:
            parts = [hashlib.md5(data[i : i + part_size]).digest() for i in range(0, len(data), part_size)]
            expected = f'"{hashlib.md5(b"".join(parts)).hexdigest()}-{len(parts)}"'
            multipart += 1
        else:
            expected = f'"{hashlib.md5(data).hexdigest()}"'
        assert meta["etag"] == expected, key
    assert multipart >= 10


def test_every_well_known_file_has_a_download(dataset_dir: Path) -> None:
    """Each WellKnownFile id maps to the bucket object holding its bytes, under the cache layout."""
    index = json.loads((dataset_dir / "dataset.json").read_text())
    files = _records(dataset_dir, "WellKnownFile")
    assert {str(f["id"]) for f in files} == set(index["downloads"])
    for f in files:
        key = index["downloads"][str(f["id"])]
        assert key in index["objects"]
        assert f["download_link"] == f"/api/v2/well_known_file_download/{f['id']}"
        if f["attachable_type"] == "EcephysSession":
            assert key.endswith(f"session_{f['attachable_id']}/session_{f['attachable_id']}.nwb")
        elif f["attachable_type"] == "EcephysProbe":
            assert key.endswith(f"/probe_{f['attachable_id']}_lfp.nwb")


def test_nwb_files_open_and_carry_their_ids(dataset_dir: Path) -> None:
    """Every NWB file opens with h5py, has nwb_version, and int(identifier) is its session or probe id."""
    cache = _cache(dataset_dir)
    files = sorted(cache.rglob("*.nwb"))
    assert len(files) == 3 + sum(p["use_lfp_data"] for p in _records(dataset_dir, "EcephysProbe"))
    for path in files:
        with h5py.File(path, "r") as handle:
            assert "nwb_version" in handle.attrs
            identifier = int(handle["identifier"][()].decode() if isinstance(handle["identifier"][()], bytes) else handle["identifier"][()])
        expected = int(path.name.split("_")[1].split(".")[0])
        assert identifier == expected, path


def test_nwb_files_are_read_by_pynwb(dataset_dir: Path) -> None:
    """With pynwb installed the files are real NWB 2.x: pynwb reads a session and an LFP file."""
    pynwb = pytest.importorskip("pynwb")
    cache = _cache(dataset_dir)
    session = next(cache.rglob("session_*.nwb"))
    with pynwb.NWBHDF5IO(str(session), "r") as io:
        nwbfile = io.read()
        assert int(nwbfile.identifier) == int(session.parent.name.split("_")[1])
        assert len(nwbfile.electrodes) > 300
    lfp = next(cache.rglob("probe_*_lfp.nwb"))
    probe_id = int(lfp.name.split("_")[1])
    with pynwb.NWBHDF5IO(str(lfp), "r") as io:
        nwbfile = io.read()
        series = nwbfile.acquisition[f"probe_{probe_id}_lfp"].electrical_series[f"probe_{probe_id}_lfp_data"]
        assert series.data.shape[1] == len(nwbfile.electrodes)


def _fmt(value: Any) -> str:
    """How pandas' to_csv writes one value: repr for floats, True/False, empty for null."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def test_sessions_csv_is_written_as_allensdk_writes_it(dataset_dir: Path) -> None:
    """sessions.csv: AllenSDK's columns, derived fields and formatting, byte for byte."""
    specimens = {s["id"]: s for s in _records(dataset_dir, "Specimen")}
    donors = {d["id"]: d for d in _records(dataset_dir, "Donor")}
    ages = {a["id"]: a for a in _records(dataset_dir, "DonorAge")}
    lines = ["id,date_of_acquisition,isi_experiment_id,published_at,specimen_id,session_type,age_in_days,sex,genotype,has_nwb"]
    for s in _records(dataset_dir, "EcephysSession"):
        donor = donors[specimens[s["specimen_id"]]["donor_id"]]
        fields = [s["id"], s["date_of_acquisition"], s["isi_experiment_id"], s["published_at"], s["specimen_id"],
                  s["stimulus_name"], ages[donor["age_id"]]["days"], donor["sex"], donor["full_genotype"] or "wt", True]  # fmt: skip
        lines.append(",".join(map(_fmt, fields)))
    assert (_cache(dataset_dir) / "sessions.csv").read_text() == "\n".join(lines) + "\n"


def test_probes_csv_is_written_as_allensdk_writes_it(dataset_dir: Path) -> None:
    """probes.csv: alphabetical record columns with use_lfp_data renamed has_lfp_data, byte for byte."""
    columns = ["air_channel_index", "ecephys_session_id", "lfp_sampling_rate", "lfp_temporal_subsampling_factor",
               "name", "phase", "sampling_rate", "surface_channel_index", "use_lfp_data"]  # fmt: skip
    lines = ["id," + ",".join(columns).replace("use_lfp_data", "has_lfp_data")]
    for p in _records(dataset_dir, "EcephysProbe"):
        lines.append(",".join(_fmt(v) for v in [p["id"], *(p[c] for c in columns)]))
    assert (_cache(dataset_dir) / "probes.csv").read_text() == "\n".join(lines) + "\n"


def test_channels_csv_joins_structures_in_tabular_order(dataset_dir: Path) -> None:
    """channels.csv: the ten tabular fields; structure ids with nulls print as floats (215.0), nulls empty."""
    structures = {s["id"]: s["acronym"] for s in _records(dataset_dir, "Structure")}
    lines = ["id,ecephys_probe_id,local_index,probe_horizontal_position,probe_vertical_position,"
             "anterior_posterior_ccf_coordinate,dorsal_ventral_ccf_coordinate,left_right_ccf_coordinate,"
             "ecephys_structure_id,ecephys_structure_acronym"]  # fmt: skip
    for c in _records(dataset_dir, "EcephysChannel"):
        sid = c["ecephys_structure_id"]
        fields = [c["id"], c["ecephys_probe_id"], c["local_index"], c["probe_horizontal_position"], c["probe_vertical_position"],
                  c["anterior_posterior_ccf_coordinate"], c["dorsal_ventral_ccf_coordinate"], c["left_right_ccf_coordinate"],
                  None if sid is None else float(sid), structures.get(sid)]  # fmt: skip
        lines.append(",".join(map(_fmt, fields)))
    text = (_cache(dataset_dir) / "channels.csv").read_text()
    assert text == "\n".join(lines) + "\n"
    assert ",215.0,APN" in text or ",385.0,VISp" in text


def test_units_csv_has_every_unit_with_id_first(dataset_dir: Path) -> None:
    """units.csv: index id, then the unit fields in alphabetical order, one row per unit."""
    import pandas as pd

    units = _records(dataset_dir, "EcephysUnit")
    frame = pd.read_csv(_cache(dataset_dir) / "units.csv", index_col="id")
    assert list(frame.columns) == sorted(k for k in units[0] if k != "id")
    assert list(frame.index) == [u["id"] for u in units]
    first = units[0]
    assert frame.loc[first["id"], "amplitude_cutoff"] == pytest.approx(first["amplitude_cutoff"])
    assert frame.loc[first["id"], "quality"] == first["quality"]


def test_metrics_csvs_swap_p_value_and_on_screen_back(dataset_dir: Path) -> None:
    """The warehouse stores p_value_rf/on_screen_rf swapped; the cached CSVs hold them the right way round."""
    import pandas as pd

    bundles = _records(dataset_dir, "EcephysUnitMetricBundle")
    first = json.loads(bundles[0]["data"])
    assert isinstance(first["p_value_rf"], bool) and isinstance(first["on_screen_rf"], float)
    cache = _cache(dataset_dir)
    for stype in ("brain_observatory_1.1", "functional_connectivity"):
        frame = pd.read_csv(cache / f"{stype}_analysis_metrics.csv", index_col="ecephys_unit_id")
        assert frame["on_screen_rf"].dropna().isin([True, False]).all()
        assert frame["p_value_rf"].dtype == float
    total = sum(len(pd.read_csv(cache / f"{t}_analysis_metrics.csv")) for t in ("brain_observatory_1.1", "functional_connectivity"))
    assert total == len(bundles)


def test_make_dataset_refuses_to_overwrite(tmp_path: Path, dataset_dir: Path) -> None:
    """A non-empty directory that is not a dataset is never touched; a dataset needs force=True."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError):
        make_dataset(other, scale="tiny")
    assert (other / "thesis.tex").read_text() == "precious"
    with pytest.raises(FileExistsError):
        make_dataset(dataset_dir, scale="tiny")


@pytest.mark.parametrize("bad", ["huge", "0", "59", "-1"])
def test_bad_scales_are_refused(bad: str) -> None:
    """A scale is full, small, tiny or a number of sessions from 1 to 58."""
    with pytest.raises(ValueError):
        parse_scale(bad)

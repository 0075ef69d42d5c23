"""The tables users see: AllenSDK's get_session_table/get_probes/get_channels/get_units/metrics views.

Expected values are computed with plain Python from the dataset's ``records/*.json`` (the raw
warehouse records), not with pandas joins, so a mistake in a join, a filter, a count or a column
list shows up as a difference.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ecephys_dl import tables
from ecephys_dl.errors import CacheError, UsageError
from ecephys_dl.layout import SESSION_TYPES
from ecephys_dl.replica.dataset import PREFIX, QUERIES
from ecephys_dl.replica.query import execute
from ecephys_dl.views import UnitFilter, Views, cache_loader, filter_by, read_table

Record = dict[str, Any]

SESSION_COLUMNS = [
    "published_at", "specimen_id", "session_type", "age_in_days", "sex", "full_genotype",
    "unit_count", "channel_count", "probe_count", "ecephys_structure_acronyms",
]  # fmt: skip
PROBE_COLUMNS = [
    "ecephys_session_id", "lfp_sampling_rate", "name", "phase", "sampling_rate", "has_lfp_data",
    "unit_count", "channel_count", "ecephys_structure_acronyms",
]  # fmt: skip
RAW_CHANNEL_COLUMNS = [
    "ecephys_probe_id", "local_index", "probe_horizontal_position", "probe_vertical_position",
    "anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate", "left_right_ccf_coordinate",
    "ecephys_structure_id", "ecephys_structure_acronym",
]  # fmt: skip
CHANNEL_COLUMNS = RAW_CHANNEL_COLUMNS + [
    "ecephys_session_id", "lfp_sampling_rate", "phase", "sampling_rate", "has_lfp_data", "unit_count",
]  # fmt: skip
# AllenSDK's waveform renames; quality and the epoch names are not shown (quality only when unfiltered).
RENAMES = {
    "PT_ratio": "waveform_PT_ratio", "amplitude": "waveform_amplitude", "duration": "waveform_duration",
    "halfwidth": "waveform_halfwidth", "recovery_slope": "waveform_recovery_slope",
    "repolarization_slope": "waveform_repolarization_slope", "spread": "waveform_spread",
    "velocity_above": "waveform_velocity_above", "velocity_below": "waveform_velocity_below", "l_ratio": "L_ratio",
}  # fmt: skip
UNIT_JOINED_COLUMNS = RAW_CHANNEL_COLUMNS + [
    "ecephys_session_id", "lfp_sampling_rate", "name", "phase", "sampling_rate", "has_lfp_data",
    "date_of_acquisition", "published_at", "specimen_id", "session_type", "age_in_days", "sex", "genotype",
]  # fmt: skip
NAN = "<nan>"


def _norm(value: Any) -> Any:
    """None and NaN as one comparable marker."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NAN
    return value


@dataclass
class World:
    """The dataset's records, cross-referenced by id."""

    models: dict[str, list[Record]]
    sessions: dict[int, Record] = field(default_factory=dict)
    probes: dict[int, Record] = field(default_factory=dict)
    channels: dict[int, Record] = field(default_factory=dict)
    acronym: dict[int, str | None] = field(default_factory=dict)
    units: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sessions = {r["id"]: r for r in self.models["EcephysSession"]}
        self.probes = {r["id"]: r for r in self.models["EcephysProbe"]}
        self.channels = {r["id"]: r for r in self.models["EcephysChannel"]}
        structures = {r["id"]: r["acronym"] for r in self.models["Structure"]}
        self.acronym = {c["id"]: structures.get(c["ecephys_structure_id"]) for c in self.models["EcephysChannel"]}
        self.units = sorted(self.models["EcephysUnit"], key=lambda u: u["id"])

    def session_of_channel(self, channel_id: int) -> int:
        return int(self.probes[self.channels[channel_id]["ecephys_probe_id"]]["ecephys_session_id"])

    def donor(self, session_id: int) -> Record:
        specimen = next(s for s in self.models["Specimen"] if s["id"] == self.sessions[session_id]["specimen_id"])
        return next(d for d in self.models["Donor"] if d["id"] == specimen["donor_id"])

    def acronyms_in_order(self, channel_ids: Sequence[int]) -> list[Any]:
        seen: list[Any] = []
        for channel_id in sorted(channel_ids):  # channels.csv is in id order
            name = _norm(self.acronym[channel_id])
            if name not in seen:
                seen.append(name)
        return seen


def passes(
    unit: Record, amp: float | None = 0.1, pres: float | None = 0.95, isi: float | None = 0.5, good: bool = True
) -> bool:
    """AllenSDK's inclusive filters, a None bound skipping its test; a null metric fails a set bound."""
    for key, bound, upper in (("amplitude_cutoff", amp, True), ("presence_ratio", pres, False), ("isi_violations", isi, True)):
        if bound is None:
            continue
        value = unit[key]
        if value is None or not (value <= bound if upper else value >= bound):
            return False
    return unit["quality"] == "good" or not good


@pytest.fixture(scope="module")
def world(dataset_dir: Path) -> World:
    models = {p.stem: json.loads(p.read_text()) for p in (dataset_dir / "records").glob("*.json")}
    return World(models)


@pytest.fixture(scope="module")
def cache(dataset_dir: Path) -> Path:
    return dataset_dir / "bucket" / PREFIX.rstrip("/")


@pytest.fixture(scope="module")
def views(cache: Path) -> Views:
    return Views.from_cache(cache)


# ------------------------------------------------------------------------------------ sessions


def test_sessions_view_matches_the_records(views: Views, world: World) -> None:
    """get_session_table(): AllenSDK's columns in order, index id, donor fields, counts of filtered units, channels, probes."""
    frame = views.sessions()
    assert list(frame.columns) == SESSION_COLUMNS
    assert frame.index.name == "id"
    assert frame.index.tolist() == sorted(world.sessions)
    units = Counter(world.session_of_channel(u["ecephys_channel_id"]) for u in world.units if passes(u))
    channels = Counter(world.session_of_channel(c) for c in world.channels)
    probes = Counter(p["ecephys_session_id"] for p in world.probes.values())
    for session_id, row in zip(frame.index.tolist(), frame.to_dict("records"), strict=True):
        record = world.sessions[session_id]
        donor = world.donor(session_id)
        age = next(a["days"] for a in world.models["DonorAge"] if a["id"] == donor["age_id"])
        assert row["published_at"] == record["published_at"]
        assert row["specimen_id"] == record["specimen_id"]
        assert row["session_type"] == record["stimulus_name"]
        assert row["age_in_days"] == age
        assert row["sex"] == donor["sex"]
        assert row["full_genotype"] == (donor["full_genotype"] or "wt")
        assert (row["unit_count"], row["channel_count"], row["probe_count"]) == (
            units[session_id], channels[session_id], probes[session_id]
        )
    assert str(frame["unit_count"].dtype) == "int64"
    assert frame["unit_count"].sum() == sum(map(passes, world.units))


def test_session_structures_are_lists_in_first_appearance_order_with_nan(views: Views, world: World) -> None:
    """ecephys_structure_acronyms: a Python list per session, distinct acronyms in channels.csv order, NaN for unregistered."""
    frame = views.sessions()
    saw_nan = False
    for session_id, acronyms in frame["ecephys_structure_acronyms"].items():
        assert type(acronyms) is list
        assert all(isinstance(a, str) or (type(a) is float and math.isnan(a)) for a in acronyms)
        own = [c for c in world.channels if world.session_of_channel(c) == session_id]
        assert [_norm(a) for a in acronyms] == world.acronyms_in_order(own)
        saw_nan |= NAN in [_norm(a) for a in acronyms]
    assert saw_nan, "the dataset should have channels outside any structure"


# -------------------------------------------------------------------------------------- probes


def test_probes_view_matches_the_records(views: Views, world: World) -> None:
    """get_probes(): columns in order, LFP rate divided by the subsampling factor, has_lfp_data, counts, structures."""
    frame = views.probes()
    assert list(frame.columns) == PROBE_COLUMNS
    assert frame.index.name == "id"
    assert frame.index.tolist() == sorted(world.probes)
    units = Counter(world.channels[u["ecephys_channel_id"]]["ecephys_probe_id"] for u in world.units if passes(u))
    channels = Counter(c["ecephys_probe_id"] for c in world.channels.values())
    for probe_id, row in zip(frame.index.tolist(), frame.to_dict("records"), strict=True):
        record = world.probes[probe_id]
        assert row["ecephys_session_id"] == record["ecephys_session_id"]
        assert row["lfp_sampling_rate"] == pytest.approx(record["lfp_sampling_rate"] / record["lfp_temporal_subsampling_factor"], rel=1e-12)
        assert 1249 < row["lfp_sampling_rate"] < 1251
        assert (row["name"], row["phase"]) == (record["name"], record["phase"])
        assert row["sampling_rate"] == pytest.approx(record["sampling_rate"], rel=1e-12)
        assert bool(row["has_lfp_data"]) == record["use_lfp_data"]
        assert (row["unit_count"], row["channel_count"]) == (units[probe_id], channels[probe_id])
        own = [c for c, ch in world.channels.items() if ch["ecephys_probe_id"] == probe_id]
        assert [_norm(a) for a in row["ecephys_structure_acronyms"]] == world.acronyms_in_order(own)


# ------------------------------------------------------------------------------------ channels


def test_channels_view_matches_the_records(views: Views, world: World) -> None:
    """get_channels(): the raw columns, then session, LFP rate, phase, sampling rate, has_lfp_data and unit count."""
    frame = views.channels()
    assert list(frame.columns) == CHANNEL_COLUMNS
    assert frame.index.name == "id"
    assert frame.index.tolist() == sorted(world.channels)
    units = Counter(u["ecephys_channel_id"] for u in world.units if passes(u))
    rows = frame.to_dict("index")
    for channel_id, record in world.channels.items():
        row = rows[channel_id]
        probe = world.probes[record["ecephys_probe_id"]]
        for key in ("ecephys_probe_id", "local_index", "probe_vertical_position", "anterior_posterior_ccf_coordinate", "ecephys_structure_id"):
            assert _norm(row[key]) == _norm(record[key])
        assert _norm(row["ecephys_structure_acronym"]) == _norm(world.acronym[channel_id])
        assert row["ecephys_session_id"] == probe["ecephys_session_id"]
        assert row["lfp_sampling_rate"] == pytest.approx(probe["lfp_sampling_rate"] / probe["lfp_temporal_subsampling_factor"], rel=1e-12)
        assert (row["phase"], bool(row["has_lfp_data"])) == (probe["phase"], probe["use_lfp_data"])
        assert row["unit_count"] == units[channel_id]


# --------------------------------------------------------------------------------------- units


def _unit_columns(world: World, *, quality: bool) -> list[str]:
    keys = [k for k in world.units[0] if k != "id" and not k.startswith("epoch_name_") and (quality or k != "quality")]
    return [RENAMES.get(k, k) for k in keys] + UNIT_JOINED_COLUMNS


def test_units_view_matches_the_records(views: Views, world: World) -> None:
    """get_units(): the passing units in id order, renamed columns, joined with channel, probe and session."""
    frame = views.units()
    assert list(frame.columns) == _unit_columns(world, quality=False)
    assert frame.index.name == "id"
    expected = [u for u in world.units if passes(u)]
    assert frame.index.tolist() == [u["id"] for u in expected]
    rows = frame.to_dict("index")
    for unit in expected:
        row = rows[unit["id"]]
        channel = world.channels[unit["ecephys_channel_id"]]
        session_id = world.session_of_channel(unit["ecephys_channel_id"])
        assert row["waveform_PT_ratio"] == pytest.approx(unit["PT_ratio"], rel=1e-12)
        assert row["L_ratio"] == pytest.approx(unit["l_ratio"], rel=1e-12)
        assert row["ecephys_probe_id"] == channel["ecephys_probe_id"]
        assert row["local_index"] == channel["local_index"]
        assert _norm(row["ecephys_structure_acronym"]) == _norm(world.acronym[unit["ecephys_channel_id"]])
        assert row["ecephys_session_id"] == session_id
        assert row["session_type"] == world.sessions[session_id]["stimulus_name"]
        assert row["genotype"] == (world.donor(session_id)["full_genotype"] or "wt")


def test_units_exactly_on_each_threshold_are_kept(views: Views, world: World) -> None:
    """The default filters are inclusive: amplitude_cutoff 0.1, presence_ratio 0.95, isi_violations 0.5 pass."""
    kept = set(views.units().index)
    for key, value in (("amplitude_cutoff", 0.1), ("presence_ratio", 0.95), ("isi_violations", 0.5)):
        on_edge = [u["id"] for u in world.units if u[key] == value and passes(u)]
        assert on_edge, f"the dataset should have a passing unit with {key} == {value}"
        assert set(on_edge) <= kept


@pytest.mark.parametrize(
    ("unit_filter", "bounds"),
    [
        (UnitFilter(amplitude_cutoff_max=0.05), {"amp": 0.05}),
        (UnitFilter(presence_ratio_min=0.97), {"pres": 0.97}),
        (UnitFilter(isi_violations_max=0.2), {"isi": 0.2}),
        # A None bound skips its test, so units whose isi_violations is null come back.
        (UnitFilter(isi_violations_max=None), {"isi": None}),
        # Thresholds only: noise units that pass them stay, and so does the quality column.
        (UnitFilter(good_only=False), {"good": False}),
        # ±inf as in the tutorial: a null metric still fails.
        (UnitFilter(math.inf, -math.inf, math.inf, good_only=False), {"amp": math.inf, "pres": -math.inf, "isi": math.inf, "good": False}),
    ],
)
def test_unit_filters_select_what_an_independent_count_says(views: Views, world: World, unit_filter: UnitFilter, bounds: dict[str, Any]) -> None:
    """Each adjusted filter keeps exactly the units a plain comparison of the records keeps."""
    frame = views.units(unit_filter)
    expected = [u["id"] for u in world.units if passes(u, **bounds)]
    assert frame.index.tolist() == expected
    assert ("quality" in frame.columns) == (not unit_filter.good_only)
    assert expected != [u["id"] for u in world.units if passes(u)]


def test_no_filter_keeps_every_unit_and_the_quality_column(views: Views, world: World) -> None:
    """UnitFilter.NONE keeps all units, null metrics and noise units included, with their quality."""
    frame = views.units(UnitFilter.NONE)
    assert frame.index.tolist() == [u["id"] for u in world.units]
    assert list(frame.columns) == _unit_columns(world, quality=True)
    assert Counter(frame["quality"]) == Counter(u["quality"] for u in world.units)
    assert frame["isi_violations"].isna().sum() == sum(1 for u in world.units if u["isi_violations"] is None) > 0
    assert UnitFilter.NONE.bounds() == {"amplitude_cutoff": None, "presence_ratio": None, "isi_violations": None}
    assert not UnitFilter.NONE.is_default and UnitFilter().is_default


def test_noise_units_are_dropped_by_default(views: Views, world: World) -> None:
    """quality != "good" never reaches the default view, even when its metrics pass."""
    noise = [u for u in world.units if u["quality"] != "good"]
    assert any(passes(u, good=False) for u in noise)
    assert {u["id"] for u in noise}.isdisjoint(views.units().index)
    thresholds_only = set(views.units(UnitFilter(good_only=False)).index)
    assert {u["id"] for u in noise} & thresholds_only == {u["id"] for u in noise if passes(u, good=False)}


def test_a_nan_bound_is_refused() -> None:
    """A NaN threshold would silently drop every unit; it is a usage error instead."""
    with pytest.raises(UsageError):
        UnitFilter(amplitude_cutoff_max=math.nan)


# ------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("session_type", SESSION_TYPES)
def test_metrics_are_the_filtered_units_joined_with_the_types_metrics(views: Views, world: World, cache: Path, session_type: str) -> None:
    """get_unit_analysis_metrics_by_session_type(): inner join of filtered units and metrics, index ecephys_unit_id."""
    raw = read_table(cache / f"{session_type}_analysis_metrics.csv", index_col="ecephys_unit_id")
    frame = views.metrics(session_type, raw)
    assert frame.index.name == "ecephys_unit_id"
    assert list(frame.columns) == _unit_columns(world, quality=False) + list(raw.columns)
    blobs = {b["ecephys_unit_id"]: json.loads(b["data"]) for b in world.models["EcephysUnitMetricBundle"]}
    expected = [
        u["id"] for u in world.units
        if passes(u) and world.sessions[world.session_of_channel(u["ecephys_channel_id"])]["stimulus_name"] == session_type
    ]  # fmt: skip
    assert frame.index.tolist() == expected
    for unit_id, value in frame["g_dsi_dg"].items():
        assert _norm(value) == _norm(blobs[unit_id]["g_dsi_dg"]) or value == pytest.approx(blobs[unit_id]["g_dsi_dg"], rel=1e-12)
    unfiltered = views.metrics(session_type, raw, UnitFilter.NONE)
    assert len(unfiltered) == len(raw)


def test_metrics_of_an_unknown_session_type_name_the_known_ones(views: Views, cache: Path) -> None:
    """An unknown session type is a usage error that lists the types in the sessions table."""
    raw = read_table(cache / f"{SESSION_TYPES[0]}_analysis_metrics.csv", index_col="ecephys_unit_id")
    with pytest.raises(UsageError) as caught:
        views.metrics("brain_observatory_2.0", raw)
    assert "brain_observatory_2.0" in str(caught.value)
    assert all(t in str(caught.value) for t in SESSION_TYPES)
    assert caught.value.exit_code == 2


# ----------------------------------------------------------------------------------- filter_by


def test_filter_by_sessions_probes_and_structures(views: Views, world: World) -> None:
    """--session/--probe/--structure: AND across options, any-of within one, membership for probes' lists."""
    session_id = sorted(world.sessions)[0]
    probe_ids = sorted(p for p, r in world.probes.items() if r["ecephys_session_id"] == session_id)[:2]

    probes = filter_by(views.probes(), session_ids=[session_id], structures=["VISp", "VISl"])
    expected_probes = [
        p for p in sorted(world.probes)
        if world.probes[p]["ecephys_session_id"] == session_id
        and {"VISp", "VISl"} & {world.acronym[c] for c, ch in world.channels.items() if ch["ecephys_probe_id"] == p}
    ]  # fmt: skip
    assert probes.index.tolist() == expected_probes and expected_probes

    channels = filter_by(views.channels(), probe_ids=probe_ids, structures=["CA1"])
    assert channels.index.tolist() == [
        c for c in sorted(world.channels) if world.channels[c]["ecephys_probe_id"] in probe_ids and world.acronym[c] == "CA1"
    ]
    units = filter_by(views.units(), session_ids=[session_id])
    assert units.index.tolist() == [u["id"] for u in world.units if passes(u) and world.session_of_channel(u["ecephys_channel_id"]) == session_id]
    sessions = filter_by(views.sessions(), session_ids=[session_id])
    assert sessions.index.tolist() == [session_id]
    assert filter_by(views.probes(), probe_ids=probe_ids).index.tolist() == probe_ids
    assert len(filter_by(views.channels())) == len(world.channels)
    assert filter_by(views.units(), structures=["no-such-area"]).empty


# ---------------------------------------------------------------------------------- read_table


@pytest.mark.parametrize(
    "body",
    [
        "id,ecephys_structure_id,n,acronym\n1,215,3,APN\n2,,4,\n",
        "id,ecephys_structure_id,n,acronym\n1,215.0,3.0,APN\n2,,4.0,\n",
        'id,ecephys_structure_id,n,acronym\n"1","215","3","APN"\n"2","","4",""\n',
    ],
    ids=["integers", "floats", "quoted-strings"],
)
def test_read_table_reads_numbers_however_they_are_written(tmp_path: Path, body: str) -> None:
    """215, 215.0 and "215" are the same number; an empty field is NaN; the index is the id."""
    path = tmp_path / "t.csv"
    path.write_text(body)
    frame = read_table(path)
    assert frame.index.name == "id" and frame.index.tolist() == [1, 2]
    assert frame["ecephys_structure_id"].iloc[0] == 215 and math.isnan(frame["ecephys_structure_id"].iloc[1])
    assert frame["n"].tolist() == [3, 4]
    assert pd.api.types.is_numeric_dtype(frame["n"]) and pd.api.types.is_numeric_dtype(frame["ecephys_structure_id"])
    assert frame["acronym"].iloc[0] == "APN" and _norm(frame["acronym"].iloc[1]) == NAN


def test_read_table_usecols_keeps_file_order_and_skips_absent_names(tmp_path: Path) -> None:
    """Only the asked-for columns, in the file's order, with the index; a name the file lacks is no error."""
    path = tmp_path / "t.csv"
    path.write_text("id,a,b,c\n1,1,2,3\n")
    frame = read_table(path, usecols=["c", "a", "missing"])
    assert list(frame.columns) == ["a", "c"] and frame.index.name == "id"


def test_read_table_errors_are_cache_errors(tmp_path: Path) -> None:
    """A missing file, or one without the index column, is a CacheError naming the file."""
    with pytest.raises(CacheError, match=r"nothing\.csv"):
        read_table(tmp_path / "nothing.csv")
    (tmp_path / "noid.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CacheError, match=r"noid\.csv"):
        read_table(tmp_path / "noid.csv")


def test_channels_from_string_valued_tabular_answers_read_the_same(tmp_path: Path, cache: Path, world: World, views: Views) -> None:
    """A channels.csv written from a tabular answer of strings gives the same channels view values."""
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy, ignore=shutil.ignore_patterns("session_*"))
    rows: list[Record] = []
    start = 0
    while True:
        page = execute(f"{QUERIES['channels']},rma::options[start_row$eq{start}][num_rows$eq5000][order$eq'id']", world.models.__getitem__, tabular_strings=True)
        rows.extend(page["msg"])
        start += page["num_rows"]
        if start >= page["total_rows"]:
            break
    assert isinstance(rows[0]["local_index"], str)
    (copy / "channels.csv").write_bytes(tables.csv_bytes(tables.channels_frame(rows)))
    pd.testing.assert_frame_equal(Views.from_cache(copy).channels(), views.channels(), check_dtype=False, check_exact=False)


# ------------------------------------------------------------------------------------- caching


@dataclass
class Recorder:
    """A loader that logs what it was asked for."""

    load: Callable[[str, Sequence[str] | None], pd.DataFrame]
    calls: list[tuple[str, tuple[str, ...] | None]] = field(default_factory=list)

    def __call__(self, name: str, columns: Sequence[str] | None) -> pd.DataFrame:
        self.calls.append((name, None if columns is None else tuple(columns)))
        return self.load(name, columns)


def test_the_sessions_view_reads_only_the_unit_columns_it_needs(cache: Path) -> None:
    """sessions(): each table read once; units and channels only in the columns that counting needs."""
    recorder = Recorder(cache_loader(cache))
    views = Views(recorder)
    views.sessions()
    views.sessions()
    views.probes()
    assert sorted(name for name, _ in recorder.calls) == ["channels", "probes", "sessions", "units"]
    asked = dict(recorder.calls)
    assert asked["units"] is not None and set(asked["units"]) == {"ecephys_channel_id", "amplitude_cutoff", "presence_ratio", "isi_violations", "quality"}
    assert asked["channels"] is not None and set(asked["channels"]) == {"ecephys_probe_id", "ecephys_structure_acronym"}
    assert asked["sessions"] is None and asked["probes"] is None


def test_each_table_is_read_and_each_join_made_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After units() and channels(), the other views re-read nothing and join nothing again."""
    recorder = Recorder(cache_loader(cache))
    merges: list[int] = []
    real_merge = pd.merge

    def counting_merge(*args: Any, **kwargs: Any) -> pd.DataFrame:
        merges.append(1)
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(pd, "merge", counting_merge)
    views = Views(recorder)
    first = views.units()
    views.channels()
    views.sessions()
    views.probes()
    again = views.units()
    views.channels()
    assert sorted(recorder.calls) == [("channels", None), ("probes", None), ("sessions", None), ("units", None)]
    # probes+sessions, channels+probes, units+channels: three joins in all.
    assert len(merges) == 3
    again["extra"] = 1
    assert "extra" not in views.units().columns and first.equals(views.units())

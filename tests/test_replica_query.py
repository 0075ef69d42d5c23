"""The replica's RMA query engine, on small hand-made tables and one large synthetic one."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecephys_dl.replica.query import (
    MODELS,
    Query,
    QueryError,
    error_envelope,
    execute,
    parse_query,
)

__all__: list[str] = []

PAGING = ",rma::options[start_row$eq{start}][num_rows$eq{rows}][order$eq'id']"

# The queries of PROTOCOL.md §2, before the paging clause, as AllenSDK sends them (decoded).
SESSIONS = (
    "criteria=model::EcephysSession,rma::include,specimen(donor(age)),"
    "well_known_files(well_known_file_type)"
)
PROBES = "criteria=model::EcephysProbe"
CHANNEL_COLUMNS = [
    "id",
    "ecephys_probe_id",
    "local_index",
    "probe_horizontal_position",
    "probe_vertical_position",
    "anterior_posterior_ccf_coordinate",
    "dorsal_ventral_ccf_coordinate",
    "left_right_ccf_coordinate",
    "ecephys_structure_id",
    "ecephys_structure_acronym",
]
CHANNELS = (
    "criteria=model::EcephysChannel,rma::include,structure,rma::options[tabular$eq'"
    "ecephys_channels.id,ecephys_probe_id,local_index,probe_horizontal_position,"
    "probe_vertical_position,anterior_posterior_ccf_coordinate,dorsal_ventral_ccf_coordinate,"
    "left_right_ccf_coordinate,structures.id as ecephys_structure_id,"
    "structures.acronym as ecephys_structure_acronym']"
)
UNITS = "criteria=model::EcephysUnit"
METRICS_BY_TYPE = (
    "criteria=model::EcephysUnitMetricBundle,rma::criteria,ecephys_unit(ecephys_channel("
    "ecephys_probe(ecephys_session[stimulus_name$in'{t}'])))"
)
METRICS_OF_SESSION = (
    "criteria=model::EcephysUnitMetricBundle,rma::criteria,ecephys_unit(ecephys_channel("
    "ecephys_probe(ecephys_session[id$in{s}])))"
)
WKF = (
    "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'{name}']"
    "[attachable_type$eq'{kind}']"
)
SESSION_NWB = WKF.format(name="EcephysNwb", kind="EcephysSession") + "[attachable_id$eq{s}]"
LFP_NWB = WKF.format(name="EcephysLfpNwb", kind="EcephysProbe") + "[attachable_id$eq{p}]"
ALL_SESSION_NWBS = WKF.format(name="EcephysNwb", kind="EcephysSession")
TEMPLATES = WKF.format(name="Stimulus", kind="Product") + "[attachable_id$eq714914585]"

BO, FC = "brain_observatory_1.1", "functional_connectivity"
S1, S2, S3 = 715093703, 719161530, 721123822


def _session(sid: int, specimen: int, stimulus: str) -> dict[str, Any]:
    return {
        "stimulus_name": stimulus,
        "id": sid,
        "specimen_id": specimen,
        "published_at": "2019-10-03T00:00:00Z",
        "isi_experiment_id": sid - 1,
        "fail_eye_tracking": False,
        "date_of_acquisition": "2019-01-09T00:26:20Z",
    }


def _wkf(fid: int, type_id: int, kind: str, owner: int) -> dict[str, Any]:
    return {
        "id": fid,
        "well_known_file_type_id": type_id,
        "attachable_type": kind,
        "attachable_id": owner,
        "path": f"/external/{owner}/{fid}.nwb",
        "download_link": f"/api/v2/well_known_file_download/{fid}",
    }


def _probe(pid: int, session: int, name: str) -> dict[str, Any]:
    return {
        "id": pid,
        "ecephys_session_id": session,
        "name": name,
        "phase": "3a",
        "air_channel_index": 380,
        "surface_channel_index": 350,
        "lfp_sampling_rate": 2499.99,
        "lfp_temporal_subsampling_factor": 2.0,
        "sampling_rate": 29999.9,
        "use_lfp_data": True,
    }


def _channel(cid: int, probe: int, index: int, structure: int | None) -> dict[str, Any]:
    registered = structure is not None
    return {
        "id": cid,
        "ecephys_probe_id": probe,
        "local_index": index,
        "probe_horizontal_position": 11 + index,
        "probe_vertical_position": 20 * index,
        "anterior_posterior_ccf_coordinate": 8165.0 if registered else -1000.0,
        "dorsal_ventral_ccf_coordinate": 3314.0 if registered else -1000.0,
        "left_right_ccf_coordinate": 6862.0 if registered else -1000.0,
        "ecephys_structure_id": structure,
    }


# Units on channels: 3 on S1's probes, 2 on S2's, 1 on S3's; one bundle per unit.
_UNIT_CHANNEL = {
    901: 8001, 902: 8002, 903: 8003, 904: 8004, 905: 8005, 906: 8006,
}  # fmt: skip

TABLES: dict[str, list[dict[str, Any]]] = {
    "EcephysSession": [_session(S1, 601, BO), _session(S2, 602, FC), _session(S3, 603, BO)],
    "Specimen": [
        {"id": 601, "name": "Sst-IRES-Cre;Ai32-386129", "donor_id": 11},
        {"id": 602, "name": "Vip-IRES-Cre;Ai32-1", "donor_id": 12},
        # Specimen 603's donor does not exist: an include must give null, not fail.
        {"id": 603, "name": "wt-1", "donor_id": 99},
    ],
    "Donor": [
        {"id": 11, "sex": "M", "full_genotype": "Sst-IRES-Cre/wt", "age_id": 21},
        {"id": 12, "sex": "F", "full_genotype": None, "age_id": 22},
    ],
    "DonorAge": [{"id": 21, "days": 118, "name": "P118"}, {"id": 22, "days": 90, "name": "P90"}],
    "WellKnownFileType": [
        {"id": 5, "name": "EcephysNwb"},
        {"id": 6, "name": "EcephysLfpNwb"},
        {"id": 7, "name": "Stimulus"},
    ],
    "WellKnownFile": [
        _wkf(1026124469, 5, "EcephysSession", S1),
        _wkf(1026124470, 5, "EcephysSession", S2),
        _wkf(1026124481, 6, "EcephysProbe", 810755797),
        _wkf(1026124482, 6, "EcephysProbe", 810755799),
        # An LFP file whose id equals a session's attachable id must not be taken for it.
        _wkf(1026124483, 6, "EcephysProbe", S3),
        _wkf(1026124300, 7, "Product", 714914585),
        _wkf(1026124301, 7, "Product", 714914585),
    ],
    "EcephysProbe": [
        _probe(810755797, S1, "probeA"),
        _probe(810755798, S1, "probeB"),
        _probe(810755799, S2, "probeA"),
        _probe(810755800, S3, "probeC"),
    ],
    "Structure": [
        {"id": 215, "acronym": "APN", "name": "Anterior pretectal nucleus"},
        {"id": 409, "acronym": "VISl", "name": "Lateral visual area"},
    ],
    "EcephysChannel": [
        _channel(8001, 810755797, 1, 215),
        _channel(8002, 810755797, 2, None),
        _channel(8003, 810755798, 0, 409),
        _channel(8004, 810755799, 3, 409),
        _channel(8005, 810755799, 4, 215),
        _channel(8006, 810755800, 5, None),
    ],
    "EcephysUnit": [
        {"id": uid, "ecephys_channel_id": cid, "quality": "good" if uid % 2 else "noise",
         "amplitude": 100.0 + uid % 7, "snr": float(uid % 3), "firing_rate": 1.5}
        for uid, cid in _UNIT_CHANNEL.items()
    ],  # fmt: skip
    "EcephysUnitMetricBundle": [
        {"id": 950000000 + uid, "ecephys_unit_id": uid, "data": '{"g_dsi_dg": 0.2}'}
        for uid in _UNIT_CHANNEL
    ],
}


class Recorder:
    """A records callable over fixed tables that remembers which models it was asked for."""

    def __init__(self, tables: Mapping[str, list[dict[str, Any]]]) -> None:
        self.tables = tables
        self.asked: set[str] = set()

    def __call__(self, model: str) -> Sequence[Mapping[str, Any]]:
        self.asked.add(model)
        return self.tables[model]


def run(q: str, **kwargs: Any) -> dict[str, Any]:
    return execute(q, Recorder(TABLES), **kwargs)


def pages(q: str, rows: int, **kwargs: Any) -> list[dict[str, Any]]:
    """Every page of `q`, asked for the way AllenSDK does, stopping on an empty page."""
    out: list[dict[str, Any]] = []
    start = 0
    for _ in range(1000):
        page = run(q + PAGING.format(start=start, rows=rows), **kwargs)
        out.append(page)
        start += page["num_rows"]
        if start >= page["total_rows"] or page["num_rows"] == 0:
            return out
    raise AssertionError("paging did not end")


def ids(envelope: Mapping[str, Any]) -> list[int]:
    return [r["id"] for r in envelope["msg"]]


def assert_sorted_keys(value: Any) -> None:
    if isinstance(value, dict):
        assert list(value) == sorted(value)
        for v in value.values():
            assert_sorted_keys(v)
    elif isinstance(value, list):
        for v in value:
            assert_sorted_keys(v)


# ------------------------------------------------------------------------------ the §2 queries


def test_sessions_pages_nest_specimen_donor_age_and_files() -> None:
    """Sessions page in id order with a constant total; includes nest recursively, keys sorted."""
    got = pages(SESSIONS, rows=2)
    assert [p["num_rows"] for p in got] == [2, 1]
    assert [p["start_row"] for p in got] == [0, 2]
    assert {p["total_rows"] for p in got} == {3}
    records = [r for p in got for r in p["msg"]]
    assert [r["id"] for r in records] == [S1, S2, S3]
    for p in got:
        assert list(p) == ["success", "id", "start_row", "num_rows", "total_rows", "msg"]
        assert p["success"] is True and p["id"] == 0
        assert_sorted_keys(p["msg"])
    first = records[0]
    assert first["specimen"]["donor"]["age"] == {"days": 118, "id": 21, "name": "P118"}
    assert first["specimen"]["donor"]["sex"] == "M"
    assert first["specimen_id"] == 601 and first["stimulus_name"] == BO
    assert [f["id"] for f in first["well_known_files"]] == [1026124469]
    assert first["well_known_files"][0]["well_known_file_type"] == {"id": 5, "name": "EcephysNwb"}
    assert records[1]["specimen"]["donor"]["full_genotype"] is None
    # S3 has no session file (the probe file attached to id S3 is of another type) and no donor.
    assert records[2]["well_known_files"] == []
    assert records[2]["specimen"]["donor"] is None


def test_probes_page_with_constant_total() -> None:
    """Probes come in id order across pages of 3; total_rows is the same on every page."""
    got = pages(PROBES, rows=3)
    assert [ids(p) for p in got] == [[810755797, 810755798, 810755799], [810755800]]
    assert [p["total_rows"] for p in got] == [4, 4]
    assert list(got[0]["msg"][0]) == sorted(TABLES["EcephysProbe"][0])


def test_channels_tabular_keys_order_and_structure_join() -> None:
    """The channels query gives flat rows in tabular order, joined to structures (null-safe)."""
    got = pages(CHANNELS, rows=4)
    assert [p["num_rows"] for p in got] == [4, 2]
    rows = [r for p in got for r in p["msg"]]
    assert all(list(r) == CHANNEL_COLUMNS for r in rows)
    assert [r["id"] for r in rows] == [8001, 8002, 8003, 8004, 8005, 8006]
    assert rows[0] == {
        "id": 8001,
        "ecephys_probe_id": 810755797,
        "local_index": 1,
        "probe_horizontal_position": 12,
        "probe_vertical_position": 20,
        "anterior_posterior_ccf_coordinate": 8165.0,
        "dorsal_ventral_ccf_coordinate": 3314.0,
        "left_right_ccf_coordinate": 6862.0,
        "ecephys_structure_id": 215,
        "ecephys_structure_acronym": "APN",
    }
    assert rows[1]["ecephys_structure_id"] is None
    assert rows[1]["ecephys_structure_acronym"] is None
    assert rows[1]["left_right_ccf_coordinate"] == -1000.0
    assert rows[2]["ecephys_structure_acronym"] == "VISl"


def test_channels_tabular_strings() -> None:
    """With tabular_strings every non-null value is text (215, 8165.0) and nulls stay null."""
    page = run(CHANNELS + PAGING.format(start=0, rows=2), tabular_strings=True)
    first, second = page["msg"]
    assert first["id"] == "8001" and first["ecephys_structure_id"] == "215"
    assert first["anterior_posterior_ccf_coordinate"] == "8165.0"
    assert first["ecephys_structure_acronym"] == "APN"
    assert second["ecephys_structure_id"] is None
    assert list(first) == CHANNEL_COLUMNS


def test_tabular_strings_renders_booleans_lowercase() -> None:
    """A bool in a tabular column becomes "true"/"false", as the warehouse's SQL prints it."""
    q = "criteria=model::EcephysProbe,rma::options[tabular$eq'name,use_lfp_data']"
    assert run(q, tabular_strings=True)["msg"][0] == {"name": "probeA", "use_lfp_data": "true"}
    assert run(q)["msg"][0] == {"name": "probeA", "use_lfp_data": True}


def test_units_default_query() -> None:
    """The units query returns every unit field, the metrics included, in alphabetical order."""
    page = run(UNITS + PAGING.format(start=0, rows=5000))
    assert ids(page) == sorted(_UNIT_CHANNEL)
    assert list(page["msg"][0]) == [
        "amplitude", "ecephys_channel_id", "firing_rate", "id", "quality", "snr",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("stimulus", "expected"),
    [
        (BO, [901, 902, 903, 906]),  # S1's probes and S3's
        (FC, [904, 905]),
        ("no_such_type", []),
    ],
)
def test_metrics_by_session_type(stimulus: str, expected: list[int]) -> None:
    """Bundles are kept when their unit→channel→probe→session chain has the stimulus name."""
    page = run(METRICS_BY_TYPE.format(t=stimulus) + PAGING.format(start=0, rows=5000))
    assert [r["ecephys_unit_id"] for r in page["msg"]] == expected
    assert page["total_rows"] == len(expected)
    assert all("ecephys_unit" not in r for r in page["msg"])  # criteria do not include


@pytest.mark.parametrize(
    ("sessions", "expected"),
    [(str(S1), [901, 902, 903]), (str(S2), [904, 905]), (f"{S2},{S3}", [904, 905, 906])],
)
def test_metrics_of_sessions(sessions: str, expected: list[int]) -> None:
    """`id$in` on the session picks the bundles of those sessions' units only."""
    page = run(METRICS_OF_SESSION.format(s=sessions) + PAGING.format(start=0, rows=5000))
    assert [r["ecephys_unit_id"] for r in page["msg"]] == expected


def test_metrics_paging_is_constant() -> None:
    """A criteria query pages like any other: same total, disjoint pages covering all."""
    got = pages(METRICS_BY_TYPE.format(t=BO), rows=3)
    assert [p["total_rows"] for p in got] == [4, 4]
    assert [r["ecephys_unit_id"] for p in got for r in p["msg"]] == [901, 902, 903, 906]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (SESSION_NWB.format(s=S1), [1026124469]),
        (SESSION_NWB.format(s=S3), []),  # the LFP file attached to id S3 is not a session file
        (LFP_NWB.format(p=810755797), [1026124481]),
        (LFP_NWB.format(p=810755798), []),  # a probe without LFP
        (ALL_SESSION_NWBS, [1026124469, 1026124470]),
        (TEMPLATES, [1026124300, 1026124301]),
        (
            WKF.format(name="EcephysNwb", kind="EcephysSession")
            + f"[attachable_id$in{S1},{S2},{S3}]",
            [1026124469, 1026124470],
        ),
        (
            WKF.format(name="EcephysLfpNwb", kind="EcephysProbe")
            + "[attachable_id$in'810755797','810755799']",
            [1026124481, 1026124482],
        ),
    ],
)
def test_well_known_files(q: str, expected: list[int]) -> None:
    """Type name filters the type, attachable_* filter the file itself (resolved upwards)."""
    page = run(q + PAGING.format(start=0, rows=5000))
    assert ids(page) == expected
    assert page["total_rows"] == len(expected)
    if expected:
        assert list(page["msg"][0]) == sorted(TABLES["WellKnownFile"][0])


def test_session_nwb_record_fields() -> None:
    """The NWB record carries download_link and attachable fields as stored."""
    (record,) = run(SESSION_NWB.format(s=S2))["msg"]
    assert record["download_link"] == "/api/v2/well_known_file_download/1026124470"
    assert record["attachable_id"] == S2 and record["attachable_type"] == "EcephysSession"


# ----------------------------------------------------------------------------------- options


def test_default_page_size_is_50() -> None:
    """Without num_rows a page holds 50 records, and total_rows counts them all."""
    units = [{"id": i, "ecephys_channel_id": 1, "quality": "good"} for i in range(120)]
    tables = {"EcephysUnit": units}
    page = execute(UNITS, Recorder(tables))
    assert page["num_rows"] == 50 and page["total_rows"] == 120 and ids(page) == list(range(50))


@pytest.mark.parametrize("all_rows", ["'all'", "all", "'ALL'"])
def test_num_rows_all_is_capped(all_rows: str) -> None:
    """num_rows all returns everything up to page_cap; explicit sizes are capped as well."""
    page = run(f"{UNITS},rma::options[num_rows$eq{all_rows}]", page_cap=4)
    assert page["num_rows"] == 4 and page["total_rows"] == 6
    assert run(f"{UNITS},rma::options[num_rows$eq{all_rows}]")["num_rows"] == 6
    assert run(UNITS + PAGING.format(start=0, rows=5000), page_cap=5)["num_rows"] == 5


def test_start_row_past_the_end_is_an_empty_page() -> None:
    """A start_row beyond the data is a successful empty page that still reports the total."""
    page = run(UNITS + PAGING.format(start=100, rows=10))
    assert page["success"] is True
    assert (page["start_row"], page["num_rows"], page["total_rows"], page["msg"]) == (100, 0, 6, [])


def test_q_prefix_and_quoted_paging_values() -> None:
    """A leading `q=` is accepted, and quoted integers in options read as integers."""
    plain = run(UNITS + PAGING.format(start=1, rows=2))
    assert run("q=" + UNITS + PAGING.format(start=1, rows=2)) == plain
    assert run(UNITS + ",rma::options[start_row$eq'1'][num_rows$eq'2'][count$eqfalse]") == plain
    assert ids(plain) == [902, 903]


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("'id$desc'", [906, 905, 904, 903, 902, 901]),
        ("'id desc'", [906, 905, 904, 903, 902, 901]),
        # amplitude = 100 + id % 7: 901→5, 902→6, 903→0, 904→1, 905→2, 906→3
        ("'amplitude'", [903, 904, 905, 906, 901, 902]),
        ("'amplitude$desc'", [902, 901, 906, 905, 904, 903]),
        # snr = id % 3: ties fall back to ascending id, whatever the direction
        ("'snr$desc'", [902, 905, 901, 904, 903, 906]),
        ("'quality,id$desc'", [905, 903, 901, 906, 904, 902]),
        ("'ecephys_units.snr'", [903, 906, 901, 904, 902, 905]),
    ],
)
def test_order(order: str, expected: list[int]) -> None:
    """Records follow the order option; ties are broken by ascending id."""
    assert ids(run(f"{UNITS},rma::options[order$eq{order}]")) == expected


def test_order_puts_nulls_last_ascending_first_descending() -> None:
    """Null values sort after everything ascending, and first descending, as in SQL."""
    q = "criteria=model::EcephysChannel,rma::options[order$eq'ecephys_structure_id{d}']"
    assert ids(run(q.format(d=""))) == [8001, 8005, 8003, 8004, 8002, 8006]
    assert ids(run(q.format(d="$desc"))) == [8002, 8006, 8003, 8004, 8001, 8005]


# ----------------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ("[id$eq901]", [901]),
        ("[id$eq'901']", [901]),  # a quoted number equals the number
        ("[quality$eq'good']", [901, 903, 905]),
        ("[quality$eqgood]", [901, 903, 905]),  # a bare word is text
        ("[quality$ne'good']", [902, 904, 906]),
        ("[id$lt903]", [901, 902]),
        ("[id$le903]", [901, 902, 903]),
        ("[id$gt904][id$lt906]", [905]),
        ("[id$ge'905']", [905, 906]),
        ("[id$in901,903,999]", [901, 903]),
        ("[id$in'902','904']", [902, 904]),
        ("[quality$ilGO*]", [901, 903, 905]),
        ("[quality$il*OI*]", [902, 904, 906]),
        ("[snr$eq1]", [901, 904]),
        ("[snr$eq1.0]", [901, 904]),
        ("[amplitude$gt104.5]", [901, 902]),
        ("[quality$lt'h']", [901, 903, 905]),  # text compares as text
        ("[id$eq'abc']", []),
        ("[id$ne'abc']", [901, 902, 903, 904, 905, 906]),
    ],
)
def test_root_filters(filters: str, expected: list[int]) -> None:
    """Root filters compare numbers numerically, text as text, quoted numbers as numbers."""
    assert ids(run(f"criteria=model::EcephysUnit{filters}")) == expected


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ("[ecephys_structure_id$eqnull]", [8002, 8006]),
        ("[ecephys_structure_id$nenull]", [8001, 8003, 8004, 8005]),
        ("[ecephys_structure_id$ne215]", [8003, 8004]),  # null is neither equal nor unequal
        ("[ecephys_structure_id$lt300]", [8001, 8005]),
        ("[ecephys_structure_id$in215,null]", [8001, 8002, 8005, 8006]),
    ],
)
def test_null_filters(filters: str, expected: list[int]) -> None:
    """Null matches only `null`, as SQL's IS NULL; comparisons with null are false."""
    assert ids(run(f"criteria=model::EcephysChannel{filters}")) == expected


def test_boolean_filters() -> None:
    """`true` and `'true'` both match a boolean field; `1` does not."""
    assert len(run("criteria=model::EcephysProbe[use_lfp_data$eqtrue]")["msg"]) == 4
    assert len(run("criteria=model::EcephysProbe[use_lfp_data$eq'true']")["msg"]) == 4
    assert run("criteria=model::EcephysProbe[use_lfp_data$eqfalse]")["msg"] == []
    assert run("criteria=model::EcephysProbe[use_lfp_data$eq1]")["msg"] == []


def test_criteria_through_has_many_and_bare_root_filter() -> None:
    """Criteria walk has-many links too, and a bare [filter] in rma::criteria filters the root."""
    q = (
        "criteria=model::EcephysSession,rma::criteria,"
        "ecephys_probes(ecephys_channels[local_index$ge4])"
    )
    assert ids(run(q)) == [S2, S3]
    q = "criteria=model::EcephysSession,rma::criteria,[stimulus_name$eq'brain_observatory_1.1']"
    assert ids(run(q)) == [S1, S3]
    q = f"criteria=model::EcephysSession,rma::criteria,well_known_files[attachable_id$eq{S2}]"
    assert ids(run(q)) == [S2]


def test_criteria_chain_must_hold_on_one_path() -> None:
    """Filters at two levels must hold on the same chain, not on separate records."""
    base = (
        "criteria=model::EcephysProbe,rma::criteria,"
        "ecephys_channels[local_index$eq{i}](structure[acronym$eq'{a}'])"
    )
    assert ids(run(base.format(i=1, a="APN"))) == [810755797]
    assert ids(run(base.format(i=2, a="APN"))) == []  # channel 8002 has no structure


def test_include_filters_filter_the_nested_list() -> None:
    """A filter on an include trims the nested records but keeps every root record."""
    q = "criteria=model::EcephysProbe,rma::include,ecephys_channels[local_index$ge2](structure)"
    page = run(q)
    assert ids(page) == [810755797, 810755798, 810755799, 810755800]
    nested = {r["id"]: [c["id"] for c in r["ecephys_channels"]] for r in page["msg"]}
    assert nested == {810755797: [8002], 810755798: [], 810755799: [8004, 8005], 810755800: [8006]}
    assert page["msg"][2]["ecephys_channels"][0]["structure"]["acronym"] == "VISl"
    assert page["msg"][0]["ecephys_channels"][0]["structure"] is None
    assert_sorted_keys(page["msg"])


def test_include_of_belongs_to_with_failing_filter_is_null() -> None:
    """A belongs-to include whose record fails its filter is null."""
    page = run(
        "criteria=model::EcephysChannel[id$in8001,8003],rma::include,structure[acronym$eq'APN']"
    )
    assert [r["structure"] for r in page["msg"]] == [
        {"acronym": "APN", "id": 215, "name": "Anterior pretectal nucleus"},
        None,
    ]


# ----------------------------------------------------------------------------- data handling


def test_missing_model_is_empty_and_only_needed_models_are_loaded() -> None:
    """A model the records callable lacks is empty; models the query does not need are not asked."""
    recorder = Recorder(TABLES)
    execute(PROBES, recorder)
    assert recorder.asked == {"EcephysProbe"}
    recorder = Recorder(TABLES)
    execute(SESSIONS, recorder)
    assert recorder.asked == {
        "EcephysSession", "Specimen", "Donor", "DonorAge", "WellKnownFile", "WellKnownFileType",
    }  # fmt: skip
    page = execute(SESSIONS, Recorder({"EcephysSession": TABLES["EcephysSession"]}))
    assert page["total_rows"] == 3
    assert all(r["specimen"] is None and r["well_known_files"] == [] for r in page["msg"])
    assert execute(UNITS, Recorder({}))["total_rows"] == 0


def test_cached_results_follow_the_data() -> None:
    """The same query over other lists (or a list that grew) answers from the new data."""
    first = {"EcephysProbe": TABLES["EcephysProbe"][:2]}
    second = {"EcephysProbe": TABLES["EcephysProbe"][2:]}
    assert ids(execute(PROBES, Recorder(first))) == [810755797, 810755798]
    assert ids(execute(PROBES, Recorder(second))) == [810755799, 810755800]
    grown = list(TABLES["EcephysProbe"][:1])
    assert execute(PROBES, Recorder({"EcephysProbe": grown}))["total_rows"] == 1
    grown.append(TABLES["EcephysProbe"][1])
    assert execute(PROBES, Recorder({"EcephysProbe": grown}))["total_rows"] == 2


def test_fields_come_from_the_records() -> None:
    """A field no spec lists but the records carry (a unit metric) can be filtered and ordered."""
    assert "firing_rate" not in MODELS["EcephysUnit"].fields
    q = "criteria=model::EcephysUnit[firing_rate$eq1.5],rma::options[order$eq'snr']"
    assert ids(run(q)) == [
        903, 906, 901, 904, 902, 905,
    ]  # fmt: skip


def test_parse_query_is_a_hashable_fact() -> None:
    """Parsing is deterministic, and `1` and `true` stay distinct values."""
    a = parse_query(SESSIONS + PAGING.format(start=0, rows=5000))
    assert isinstance(a, Query)
    assert a == parse_query(SESSIONS + PAGING.format(start=0, rows=5000))
    assert hash(a) == hash(parse_query(SESSIONS + PAGING.format(start=0, rows=5000)))
    assert parse_query(f"{UNITS}[id$eq1]") != parse_query(f"{UNITS}[id$eqtrue]")
    assert a.options.num_rows == 5000
    assert [n.name for n in a.includes] == ["specimen", "well_known_files"]


def test_error_envelope_shape() -> None:
    """The error envelope carries the message as msg and zero counts, in the wire's key order."""
    assert error_envelope("bad") == {
        "success": False, "id": 0, "start_row": 0, "num_rows": 0, "total_rows": 0, "msg": "bad",
    }  # fmt: skip
    assert list(error_envelope("x")) == [
        "success", "id", "start_row", "num_rows", "total_rows", "msg",
    ]  # fmt: skip


def test_threads_share_the_caches_safely() -> None:
    """Concurrent paged queries over the same tables all see the same complete answers."""
    units = [{"id": i, "ecephys_channel_id": i % 5, "quality": "good"} for i in range(3000)]
    tables = {"EcephysUnit": units}
    recorder = Recorder(tables)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def worker(desc: bool) -> None:
        try:
            order = "'id$desc'" if desc else "'id'"
            got: list[int] = []
            for start in range(0, 3000, 500):
                q = (
                    f"{UNITS}[ecephys_channel_id$ne0],rma::options[start_row$eq{start}]"
                    f"[num_rows$eq500][order$eq{order}]"
                )
                got.extend(ids(execute(q, recorder)))
            results.append(sorted(got))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    expected = [i for i in range(3000) if i % 5]
    assert results == [expected] * 6


# -------------------------------------------------------------------------------------- errors


U = UNITS


@pytest.mark.parametrize(
    ("q", "fragment"),
    [
        ("", "empty"),
        ("q=", "empty"),
        ("   ", "empty"),
        ("garbage", "criteria=model::"),
        ("criteria=model::Nope", "unknown model 'Nope'"),
        (U + "[", "missing ']'"),
        (U + "]", "unbalanced"),
        (U + "[id$eq1", "missing ']'"),
        (U + "[id$eq'1]", "unterminated quote"),
        (U + "[id$xx1]", "unknown operator $xx"),
        (U + "[id$eq]", "missing its value"),
        (U + "[id=1]", "malformed filter"),
        (U + "[id$eq1,2]", "malformed value"),
        (U + "[id$in1,,2]", "missing its value"),
        (U + "[nope$eq1]", "unknown field 'nope'"),
        (U + " junk", "unexpected"),
        (U + ",junk", "unexpected clause"),
        (U + ",,rma::include", "empty clause"),
        (U + ",rma::include,nope", "unknown association 'nope'"),
        (U + ",rma::include,ecephys_channel(nope)", "unknown association 'nope'"),
        (U + ",rma::include,ecephys_channel()", "association name"),
        (U + ",rma::include,ecephys_channel(structure", "missing"),
        (U + ",rma::include,ecephys_channel)", "unbalanced"),
        (U + ",rma::include,ecephys_channel[nope$eq1]", "unknown field 'nope'"),
        (U + ",rma::include,ecephys_channel[id$eq1]x", "unexpected"),
        (U + ",rma::criteria,ecephys_channel[nope$eq1]", "unknown field 'nope'"),
        (U + ",rma::criteria,[nope$eq1]", "unknown field 'nope'"),
        (U + ",rma::options", "rma::options must be followed"),
        (U + ",rma::options[bogus$eq1]", "unknown option 'bogus'"),
        (U + ",rma::options[start_row$eq-1]", "non-negative"),
        (U + ",rma::options[start_row$eq1.5]", "non-negative integer"),
        (U + ",rma::options[start_row$eqabc]", "non-negative integer"),
        (U + ",rma::options[num_rows$eq-5]", "non-negative"),
        (U + ",rma::options[num_rows$eq99999999999999999999999]", "too large"),
        (U + ",rma::options[start_row$lt1]", "malformed option"),
        (U + ",rma::options[num_rows$eq5]x", "unexpected"),
        (U + ",rma::options[order$eq'nope']", "unknown field 'nope'"),
        (U + ",rma::options[order$eq'a b c']", "malformed order"),
        (U + ",rma::options[order$eq'structures.id']", "only fields of"),
        (U + ",rma::options[count$eqmaybe]", "count must be"),
        (U + ",rma::options[tabular$eq'id,,quality']", "malformed tabular"),
        (U + ",rma::options[tabular$eq'id,id']", "more than once"),
        (U + ",rma::options[tabular$eq'nope']", "unknown field 'nope'"),
        (U + ",rma::options[tabular$eq'structures.id']", "not reached"),
        (U + ",rma::options[tabular$eq'bogus.id']", "unknown table"),
        (
            "criteria=model::EcephysProbe,rma::include,ecephys_channels,"
            "rma::options[tabular$eq'ecephys_channels.local_index']",
            "only belongs-to",
        ),
        (U + "" + ",rma::include," + "ecephys_channel(ecephys_units(" * 40 + ")" * 80, "deeper"),
        (U + "[id$eq1]" * 20_000, "longer than"),
    ],
)
def test_query_errors(q: str, fragment: str) -> None:
    """Every malformed or unknown input raises QueryError with a message naming the problem."""
    with pytest.raises(QueryError) as info:
        execute(q, Recorder(TABLES))
    assert fragment in str(info.value)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "q",
    [
        U + ",rma::options[order$eq'id" + " " * 90_000 + "x']",
        U + ",rma::options[tabular$eq'id" + " " * 90_000 + "x']",
        U + "[id" + " " * 90_000 + "x]",
        U + "[id$eq" + "1" * 90_000 + "x]",
        U + ",rma::options[start_row$eq" + "1" * 90_000 + "]",
        U + "[" * 45_000 + "]" * 45_000,
        U + ",rma::include," + "(" * 90_000,
        U + "[quality$il" + "*a" * 45_000 + "]",
        U + "[id$in" + "1," * 45_000 + "]",
    ],
    ids=["order", "tabular", "filter", "number", "start_row", "brackets", "parens", "il", "in"],
)
def test_adversarial_queries_answer_promptly_with_short_messages(q: str) -> None:
    """Long hostile input is parsed in linear time and errors quote it only briefly."""
    try:
        execute(q, Recorder(TABLES))
    except QueryError as err:
        assert len(str(err)) < 300


_PIECES = st.sampled_from(
    [
        "criteria=", "model::", "EcephysUnit", "EcephysSession", "WellKnownFile", "rma::include",
        "rma::criteria", "rma::options", ",", "[", "]", "(", ")", "'", "$eq", "$in", "$il", "$lt",
        "$ne", "id", "quality", "start_row", "num_rows", "order", "tabular", "all", "null",
        "true", "1", "-3", "1.5e9", "*", " as ", ".", "specimen", "ecephys_channel", "structures",
        "well_known_file_type", "name", "desc", "q=", "=", "::", "$", "''",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_PIECES, max_size=25).map("".join)))
def test_only_query_errors_escape(q: str) -> None:
    """Whatever the text, execute answers an envelope or raises QueryError, nothing else."""
    try:
        page = execute(q, Recorder(TABLES))
    except QueryError as err:
        assert str(err)
    else:
        assert page["success"] is True
        assert page["num_rows"] == len(page["msg"]) <= page["total_rows"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(["[id$gt902]", "[quality$eq'good']", "[snr$in0,1]", "[id$ne905]"]),
        max_size=3,
    ),
    st.integers(0, 8),
    st.integers(1, 7),
)
def test_pages_partition_the_result(filters: list[str], start: int, rows: int) -> None:
    """Any page is the matching slice of the full ordered result, with the same total."""
    q = f"criteria=model::EcephysUnit{''.join(filters)}"
    everything = run(f"{q},rma::options[num_rows$eqall]")
    page = run(q + PAGING.format(start=start, rows=rows))
    assert page["total_rows"] == everything["total_rows"]
    assert page["msg"] == everything["msg"][start : start + rows]
    assert page["start_row"] == start


# ---------------------------------------------------------------------------------------- scale


def test_hundred_thousand_units_page_by_5000() -> None:
    """100,000 units page 5,000 at a time into every id once, with a constant total."""
    n = 100_000
    metrics = [f"metric_{k}" for k in range(25)]
    units = [
        {"id": 10_000_000 + i, "ecephys_channel_id": i // 3, "quality": "good"}
        | {m: i * 0.5 for m in metrics}
        for i in range(n)
    ]
    recorder = Recorder({"EcephysUnit": units})
    seen: list[int] = []
    totals: set[int] = set()
    for start in range(0, n, 5000):
        page = execute(UNITS + PAGING.format(start=start, rows=5000), recorder)
        totals.add(page["total_rows"])
        assert page["num_rows"] == 5000
        assert list(page["msg"][0]) == sorted(page["msg"][0])
        seen.extend(ids(page))
    assert totals == {n}
    assert seen == [10_000_000 + i for i in range(n)]
    last = execute(UNITS + PAGING.format(start=n, rows=5000), recorder)
    assert (last["num_rows"], last["total_rows"]) == (0, n)

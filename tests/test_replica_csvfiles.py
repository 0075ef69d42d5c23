"""The replica's own CSV writer: independent of the client's tables code, and byte for byte the same.

The replica writes the bucket's metadata CSVs with :mod:`ecephys_dl.replica.csvfiles`; the client
writes its CSVs with :mod:`ecephys_dl.tables` (pandas). Tests comparing the two are only worth
something while the replica does not use the client's code: that is checked here, and so is the
agreement of the two writers, on generated datasets and on rows of every awkward kind.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecephys_dl import tables
from ecephys_dl.replica import csvfiles
from ecephys_dl.replica.dataset import QUERIES, generate_records
from ecephys_dl.replica.query import execute

REPLICA = Path(csvfiles.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted(REPLICA.rglob("*.py")), ids=lambda p: p.name)
def test_the_replica_never_imports_the_clients_tables_code(path: Path) -> None:
    """No module of the replica imports ecephys_dl.tables, at the top or inside a function."""
    assert not {name for name in _imports(path) if name == "ecephys_dl.tables" or name.startswith("ecephys_dl.tables.")}


def _query_all(q: str, records: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    start = 0
    while True:
        page = execute(f"{q},rma::options[start_row$eq{start}][num_rows$eq50000][order$eq'id']", records.__getitem__)
        rows.extend(page["msg"])
        start += page["num_rows"]
        if start >= page["total_rows"] or not page["num_rows"]:
            return rows


@pytest.mark.parametrize(("scale", "seed"), [("tiny", 1), ("tiny", 7), ("small", 3)])
def test_both_writers_agree_on_a_generated_dataset(scale: str, seed: int) -> None:
    """Each metadata table, and the metrics of each session type, is the same bytes from both writers."""
    records = generate_records(scale, seed=seed)
    pairs = {
        "sessions": (csvfiles.sessions_csv, tables.sessions_frame),
        "probes": (csvfiles.probes_csv, tables.probes_frame),
        "channels": (csvfiles.channels_csv, tables.channels_frame),
        "units": (csvfiles.units_csv, tables.units_frame),
    }
    for name, (ours, theirs) in pairs.items():
        rows = _query_all(QUERIES[name], records)
        assert ours(rows) == tables.csv_bytes(theirs(rows)), name
    bundles = records["EcephysUnitMetricBundle"]
    for part in (bundles[: len(bundles) // 2], bundles[len(bundles) // 2 :], bundles[:1]):
        assert csvfiles.metrics_csv(part) == tables.csv_bytes(tables.metrics_frame(part))


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
_INTS = st.integers(min_value=-(2**53), max_value=2**53)
# Each column draws its values from one kind (as real columns do) or from a mix of them.
_COLUMN_VALUES = st.sampled_from(
    [
        st.booleans(),
        _INTS,
        _FLOATS,
        st.one_of(_INTS, _FLOATS),
        _TEXT,
        st.one_of(st.booleans(), st.none()),
        st.one_of(_INTS, st.none()),
        st.one_of(_FLOATS, st.none()),
        st.one_of(_TEXT, st.none()),
        st.sampled_from(["APN", "VISp", "a,b", 'say "hi"', "line\nbreak", " padded ", ""]),
    ]
)


@st.composite
def _tables(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=1, max_value=6))
    ids = draw(st.lists(st.integers(min_value=1, max_value=2**40), min_size=n, max_size=n, unique=True))
    columns = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=0, max_size=4, unique=True))
    kinds = {c: draw(_COLUMN_VALUES) for c in columns}
    return [{"id": i, **{c: draw(kinds[c]) for c in columns}} for i in ids]


@settings(max_examples=300, deadline=None)
@given(_tables())
def test_both_writers_agree_on_awkward_rows(rows: list[dict[str, Any]]) -> None:
    """Bools, ints, floats (NaN, inf, huge, tiny), strings to quote, gaps: written alike by both writers."""
    assert csvfiles.units_csv(rows) == tables.csv_bytes(tables.units_frame(rows))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "p_value_rf": st.one_of(st.booleans(), st.floats(0, 1), st.none()),
                "on_screen_rf": st.one_of(st.floats(0, 1), st.booleans(), st.integers(0, 1), st.none()),
                "g_dsi_dg": st.one_of(st.floats(0, 1), st.none()),
            }
        ),
        min_size=1,
        max_size=5,
    )
)
def test_both_writers_swap_the_receptive_field_columns_alike(blobs: list[dict[str, Any]]) -> None:
    """p_value_rf and on_screen_rf are swapped back by both writers in the same cases."""
    bundles = [{"data": json.dumps(b), "ecephys_unit_id": 900 + i, "id": 950 + i} for i, b in enumerate(blobs)]
    assert csvfiles.metrics_csv(bundles) == tables.csv_bytes(tables.metrics_frame(bundles))


def test_the_writer_follows_allensdks_conventions() -> None:
    """Index first, True/False, empty for a gap, a gap turning whole numbers into floats, minimal quoting."""
    rows = [
        {"id": 2, "flag": True, "n": 215, "x": 0.1, "s": "a,b"},
        {"id": 1, "flag": False, "n": None, "x": math.nan, "s": None},
    ]
    assert csvfiles.units_csv(rows) == b'id,flag,n,x,s\n2,True,215.0,0.1,"a,b"\n1,False,,,\n'

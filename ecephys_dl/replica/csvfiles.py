"""The replica's writer of AllenSDK's metadata CSVs, independent of the client's ``ecephys_dl.tables``.

AllenSDK builds each table with ``pandas.DataFrame.from_records`` over the warehouse's records and
writes it with ``DataFrame.to_csv`` (PROTOCOL.md §5). This module writes the same bytes from the
records directly, from those facts alone, so that tests comparing the client's CSVs with the
replica's compare two writers rather than one writer with itself:

- the index column comes first (``id``; ``ecephys_unit_id`` for metrics), then the other
  columns in the order their keys first appear in the records;
- a column of whole numbers only is written as integers; a column of numbers with a float or a
  missing value among them is a float column, every value written as Python (and numpy) write a
  float (``215.0``, ``0.1``, ``1e-05``) and a missing one as nothing;
- booleans are ``True``/``False``, strings as they are, anything missing (None, NaN) empty;
- fields are quoted only where the CSV format needs it (a comma, a quote, a line break), lines
  end with ``\\n``, and the text is UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

__all__ = [
    "CHANNEL_COLUMNS",
    "Row",
    "channels_csv",
    "metrics_csv",
    "probes_csv",
    "sessions_csv",
    "table_csv",
    "units_csv",
]

Row: TypeAlias = Mapping[str, object]

# The channels query's `tabular` fields (PROTOCOL.md §2), which are channels.csv's columns in order.
CHANNEL_COLUMNS = (
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
)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(values: Sequence[object]) -> str:
    """How pandas types a column of these values: ``int``, ``float`` or ``object`` (anything else)."""
    present = [v for v in values if not _missing(v)]
    if not present or not all(_is_number(v) for v in present):
        return "object"
    if len(present) == len(values) and all(isinstance(v, int) for v in present):
        return "int"
    return "float"  # a float or a gap makes the whole column float: 215 is written 215.0


def _text(value: object, kind: str) -> str:
    """One CSV field: empty when missing, a float as Python and numpy write it, anything else as str()."""
    if _missing(value):
        return ""
    if isinstance(value, float) or (kind == "float" and isinstance(value, int)):
        # repr gives the shortest text that reads back as the same float, as numpy's str does.
        return repr(float(value))
    return str(value)


def _column_texts(values: Sequence[object]) -> list[str]:
    """The CSV fields of one column, typed as a whole the way pandas infers a column's dtype."""
    kind = _kind(values)
    return [_text(v, kind) for v in values]


def _ordered_keys(rows: Iterable[Row]) -> list[str]:
    """Every key of the rows, in the order they first appear."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def table_csv(rows: Sequence[Row], index: str, columns: Sequence[str] | None = None) -> bytes:
    """The CSV of ``rows`` with ``index`` as the first column, then ``columns`` (default: the rows' keys)."""
    names = [c for c in (columns if columns is not None else _ordered_keys(rows)) if c != index]
    fields = [_column_texts([row.get(name) for row in rows]) for name in [index, *names]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([index, *names])
    for line in zip(*fields, strict=True):
        writer.writerow(line)
    return buffer.getvalue().encode("utf-8")


def _field(record: Row, *path: str) -> object:
    """The value at ``path`` in nested objects, or None where a level is missing or null."""
    value: object = record
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _has_session_nwb(record: Row) -> bool:
    files = record.get("well_known_files")
    if not isinstance(files, list):
        return False
    return any(_field(f, "well_known_file_type", "name") == "EcephysNwb" for f in files if isinstance(f, Mapping))


def sessions_csv(records: Sequence[Row]) -> bytes:
    """sessions.csv from the sessions query's records (with ``specimen(donor(age))`` and ``well_known_files``).

    The record's own columns, less ``specimen``, ``fail_eye_tracking`` and ``well_known_files``,
    with ``stimulus_name`` called ``session_type``; then ``age_in_days``, ``sex``, ``genotype``
    (a null genotype is ``wt``) and ``has_nwb``.
    """
    dropped = {"specimen", "fail_eye_tracking", "well_known_files"}
    rows: list[dict[str, object]] = []
    for record in records:
        row = {("session_type" if k == "stimulus_name" else k): v for k, v in record.items() if k not in dropped}
        row["age_in_days"] = _field(record, "specimen", "donor", "age", "days")
        row["sex"] = _field(record, "specimen", "donor", "sex")
        row["genotype"] = _field(record, "specimen", "donor", "full_genotype") or "wt"
        row["has_nwb"] = _has_session_nwb(record)
        rows.append(row)
    return table_csv(rows, "id")


def probes_csv(records: Sequence[Row]) -> bytes:
    """probes.csv from the probes query's records, ``use_lfp_data`` called ``has_lfp_data``."""
    rows = [{("has_lfp_data" if k == "use_lfp_data" else k): v for k, v in r.items()} for r in records]
    return table_csv(rows, "id")


def channels_csv(records: Sequence[Row]) -> bytes:
    """channels.csv from the channels ``tabular`` query's records: the ten fields in their order."""
    return table_csv(records, "id", CHANNEL_COLUMNS)


def units_csv(records: Sequence[Row]) -> bytes:
    """units.csv from the units query's records: ``id``, then the unit fields."""
    return table_csv(records, "id")


def _swapped_back(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The rows with ``p_value_rf`` and ``on_screen_rf`` swapped back when the warehouse has them swapped.

    As AllenSDK decides it: the first present ``p_value_rf`` is a bool and every present
    ``on_screen_rf`` is a float. The columns keep their places; only their names change.
    """
    keys = _ordered_keys(rows)
    if not rows or "p_value_rf" not in keys or "on_screen_rf" not in keys:
        return rows
    firsts = [r.get("p_value_rf") for r in rows if not _missing(r.get("p_value_rf"))]
    screen = [r.get("on_screen_rf") for r in rows]
    # In a float column every value is a float, the whole numbers too; elsewhere each counts as it is.
    floats = _kind(screen) == "float" or all(isinstance(v, float) for v in screen if not _missing(v))
    if not (firsts and isinstance(firsts[0], bool) and floats):
        return rows
    names = {"p_value_rf": "on_screen_rf", "on_screen_rf": "p_value_rf"}
    return [{names.get(k, k): row.get(k) for k in keys} for row in rows]


def metrics_csv(bundles: Sequence[Row]) -> bytes:
    """``<type>_analysis_metrics.csv`` from metric bundles: each ``data`` JSON string is a row of its unit."""
    rows: list[dict[str, object]] = []
    for bundle in bundles:
        data = bundle.get("data")
        values = json.loads(data) if isinstance(data, str) else {}
        if not isinstance(values, dict):
            raise ValueError(f"the metric bundle {bundle.get('id')!r} holds no JSON object")
        rows.append(dict(values))
    rows = _swapped_back(rows)
    keys = _ordered_keys(rows)
    indexed = [{"ecephys_unit_id": bundle.get("ecephys_unit_id"), **row} for bundle, row in zip(bundles, rows, strict=True)]
    return table_csv(indexed, "ecephys_unit_id", keys)

"""The raw metadata tables, built from RMA records exactly as AllenSDK builds and caches them.

Each ``*_frame`` function turns the records of one RMA query (PROTOCOL.md §2) into the DataFrame
AllenSDK's warehouse API returns, and :func:`csv_bytes` renders it the way AllenSDK writes it into
the cache (``DataFrame.to_csv``: index column first, ``True``/``False``, empty for NaN).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CHANNEL_COLUMNS",
    "channels_frame",
    "csv_bytes",
    "metrics_frame",
    "probes_frame",
    "sessions_frame",
    "units_frame",
]

Record = Mapping[str, Any]

# The channels query's `tabular` fields, in order: they are the columns of channels.csv.
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


def _frame(records: Sequence[Record], columns: Sequence[str] | None = None) -> pd.DataFrame:
    import pandas as pd

    # Column order follows the records' key order (alphabetical from the warehouse), as AllenSDK's does.
    frame = pd.DataFrame.from_records(list(records), columns=list(columns) if columns else None)
    return frame.set_index("id")


def sessions_frame(records: Sequence[Record]) -> pd.DataFrame:
    """sessions.csv from the sessions query (with ``specimen(donor(age))`` and ``well_known_files``)."""
    frame = _frame(records)
    donors = [(r.get("specimen") or {}).get("donor") or {} for r in records]
    frame["age_in_days"] = [(d.get("age") or {}).get("days") for d in donors]
    frame["sex"] = [d.get("sex") for d in donors]
    # A missing genotype is a wild-type mouse.
    frame["genotype"] = [d.get("full_genotype") or "wt" for d in donors]
    frame["has_nwb"] = [
        any(((f.get("well_known_file_type") or {}).get("name") == "EcephysNwb") for f in r.get("well_known_files") or [])
        for r in records
    ]
    frame = frame.drop(columns=["specimen", "fail_eye_tracking", "well_known_files"], errors="ignore")
    return frame.rename(columns={"stimulus_name": "session_type"})


def probes_frame(records: Sequence[Record]) -> pd.DataFrame:
    """probes.csv from the probes query."""
    return _frame(records).rename(columns={"use_lfp_data": "has_lfp_data"})


def channels_frame(records: Sequence[Record]) -> pd.DataFrame:
    """channels.csv from the channels ``tabular`` query."""
    return _frame(records, CHANNEL_COLUMNS)


def units_frame(records: Sequence[Record]) -> pd.DataFrame:
    """units.csv from the units query."""
    return _frame(records)


def metrics_frame(bundles: Sequence[Record]) -> pd.DataFrame:
    """``<type>_analysis_metrics.csv`` from metric bundles: each ``data`` JSON string becomes a row.

    The warehouse has ``p_value_rf`` and ``on_screen_rf`` swapped; they are swapped back when the
    first ``p_value_rf`` is a bool and ``on_screen_rf`` holds floats, as AllenSDK does.
    """
    import pandas as pd

    rows = [json.loads(b["data"]) for b in bundles]
    frame = pd.DataFrame.from_records(rows)
    frame.insert(0, "ecephys_unit_id", [b["ecephys_unit_id"] for b in bundles])
    frame = frame.set_index("ecephys_unit_id")
    if len(frame) and {"p_value_rf", "on_screen_rf"} <= set(frame.columns):
        first = frame["p_value_rf"].dropna()
        others = frame["on_screen_rf"].dropna()
        if (
            len(first)
            and pd.api.types.is_bool(first.iloc[0])
            and all(pd.api.types.is_float(v) and not pd.api.types.is_bool(v) for v in others)
        ):
            frame = frame.rename(columns={"p_value_rf": "on_screen_rf", "on_screen_rf": "p_value_rf"})
    return frame


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The bytes AllenSDK writes for a table (``DataFrame.to_csv`` with its defaults)."""
    text: str = frame.to_csv()
    return text.encode("utf-8")

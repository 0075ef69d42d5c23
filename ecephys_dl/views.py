"""The tables users see: AllenSDK's ``get_session_table``, ``get_probes``, ``get_channels``,
``get_units`` and ``get_unit_analysis_metrics_by_session_type``, built from the raw cache CSVs.

The views follow AllenSDK 2.16.2 (``EcephysProjectCache``) step for step, so the frames match
its columns, column order, index and values: probes are joined to their session, channels to
their probe, units to their channel (all inner joins), counts come from those joined tables, and
units pass the quality filters before anything counts them.

Where the views differ from AllenSDK on purpose:

- A :class:`UnitFilter` bound of ``None`` skips that comparison, so units whose metric is NaN are
  kept. AllenSDK's way to "disable" a filter is ±inf, which still drops NaN.
- A session or probe without any channel gets an empty ``ecephys_structure_acronyms`` list
  (AllenSDK leaves a ``0`` there).

Tables come from a :data:`Loader`, so the caller decides where the CSVs live. Each raw table is
read once and each joined table built once per :class:`Views`. Counting units needs only five of
the unit columns, so :meth:`Views.sessions`, :meth:`Views.probes` and :meth:`Views.channels` ask
the loader for just those (and for three channel columns when the channel view itself is not
needed); a later call that needs a whole table reads it in full.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ecephys_dl.errors import CacheError, UsageError
from ecephys_dl.layout import CacheLayout

__all__ = [
    "CHANNEL_SUPPRESS",
    "PROBE_SUPPRESS",
    "SESSION_SUPPRESS",
    "UNIT_RENAMES",
    "UNIT_SUPPRESS",
    "Loader",
    "UnitFilter",
    "Views",
    "cache_loader",
    "filter_by",
    "read_table",
]

Loader = Callable[[str, Sequence[str] | None], pd.DataFrame]
"""Table name (``sessions``, ``probes``, ``channels``, ``units``) and the columns wanted besides
the ``id`` index (``None``: all of them) → the raw table indexed by ``id``. Columns a table lacks
may be left out of the answer."""

# AllenSDK's renames of unit columns (EcephysProjectCache._get_units).
UNIT_RENAMES: Mapping[str, str] = {
    "PT_ratio": "waveform_PT_ratio",
    "amplitude": "waveform_amplitude",
    "duration": "waveform_duration",
    "halfwidth": "waveform_halfwidth",
    "recovery_slope": "waveform_recovery_slope",
    "repolarization_slope": "waveform_repolarization_slope",
    "spread": "waveform_spread",
    "velocity_above": "waveform_velocity_above",
    "velocity_below": "waveform_velocity_below",
    "l_ratio": "L_ratio",
}
# Columns AllenSDK hides from each view (its SUPPRESS_FROM_* constants).
UNIT_SUPPRESS = (
    "air_channel_index", "surface_channel_index", "has_nwb", "lfp_temporal_subsampling_factor",
    "epoch_name_quality_metrics", "epoch_name_waveform_metrics", "isi_experiment_id",
)  # fmt: skip
CHANNEL_SUPPRESS = (
    "air_channel_index", "surface_channel_index", "name", "date_of_acquisition", "published_at",
    "specimen_id", "session_type", "isi_experiment_id", "age_in_days", "sex", "genotype", "has_nwb",
    "lfp_temporal_subsampling_factor",
)  # fmt: skip
PROBE_SUPPRESS = (
    "air_channel_index", "surface_channel_index", "date_of_acquisition", "published_at",
    "specimen_id", "session_type", "isi_experiment_id", "age_in_days", "sex", "genotype", "has_nwb",
    "lfp_temporal_subsampling_factor",
)  # fmt: skip
SESSION_SUPPRESS = ("has_nwb", "isi_experiment_id", "date_of_acquisition")

_ACRONYM = "ecephys_structure_acronym"
_ACRONYMS = "ecephys_structure_acronyms"
_REFETCH_HINT = "the file may be damaged or from another source: fetch the metadata tables again"


@dataclass(frozen=True)
class UnitFilter:
    """AllenSDK's unit quality filters, all inclusive (``<=`` for maxima, ``>=`` for minima).

    A NaN metric fails any comparison, as in AllenSDK. A bound of ``None`` skips its comparison
    altogether, so NaN metrics are kept (AllenSDK's ±inf still drops them). ``good_only`` keeps
    units whose ``quality`` is ``"good"`` and then drops the ``quality`` column, as AllenSDK's
    ``filter_by_validity`` does. :attr:`NONE` keeps every unit and the ``quality`` column.
    """

    amplitude_cutoff_max: float | None = 0.1
    presence_ratio_min: float | None = 0.95
    isi_violations_max: float | None = 0.5
    good_only: bool = True

    NONE: ClassVar[UnitFilter]

    def __post_init__(self) -> None:
        for name, value in self.bounds().items():
            if value is not None and math.isnan(value):
                raise UsageError(f"the {name} bound is NaN", hint="give a number, or leave the filter out")

    def bounds(self) -> dict[str, float | None]:
        """Each bound by the unit column it applies to."""
        return {
            "amplitude_cutoff": self.amplitude_cutoff_max,
            "presence_ratio": self.presence_ratio_min,
            "isi_violations": self.isi_violations_max,
        }

    @property
    def is_default(self) -> bool:
        """Whether these are AllenSDK's default filters."""
        return self == UnitFilter()

    @property
    def columns(self) -> tuple[str, ...]:
        """The unit columns this filter reads."""
        used = tuple(column for column, value in self.bounds().items() if value is not None)
        return used + ("quality",) if self.good_only else used

    def apply(self, units: pd.DataFrame) -> pd.DataFrame:
        """The units that pass (a new frame; ``quality`` dropped when ``good_only``)."""
        missing = [c for c in self.columns if c != "quality" and c not in units.columns]
        if missing:
            raise CacheError(f"units.csv has no column {', '.join(missing)}", hint=_REFETCH_HINT)
        keep: pd.Series[bool] | None = None
        for column, value in self.bounds().items():
            if value is None:
                continue
            passes = units[column] >= value if column == "presence_ratio" else units[column] <= value
            keep = passes if keep is None else keep & passes
        if keep is not None:
            units = units[keep]
        # AllenSDK checks for the column rather than requiring it; so do we.
        if self.good_only and "quality" in units.columns:
            units = units[units["quality"] == "good"].drop(columns="quality")
        return units


UnitFilter.NONE = UnitFilter(None, None, None, good_only=False)


def read_table(path: Path, *, index_col: str = "id", usecols: Iterable[str] | None = None) -> pd.DataFrame:
    """Read a metadata CSV as AllenSDK does (``read_csv(index_col=...)``), optionally only some columns.

    ``usecols`` names the columns wanted besides the index; names the file lacks are skipped and
    the file's column order is kept. The C parser reads ``215``, ``215.0`` and ``"215"`` as the
    same number (a column is int64 only when every value is a whole number without a point).
    """
    selector: Callable[[Hashable], bool] | None = None
    if usecols is not None:
        wanted = frozenset(usecols) | {index_col}
        selector = wanted.__contains__
    try:
        return pd.read_csv(path, index_col=index_col, usecols=selector, engine="c")
    except FileNotFoundError:
        raise CacheError(f"{path} does not exist", hint="fetch the metadata tables into the cache first") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        # ValueError is what pandas raises when the index column is missing.
        raise CacheError(f"cannot read {path}: {exc}", hint=_REFETCH_HINT) from exc


def cache_loader(root: Path) -> Loader:
    """A :data:`Loader` reading the four tables of the AllenSDK cache at ``root``."""
    layout = CacheLayout(Path(root))

    def load(name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        return read_table(layout.table(name), usecols=columns)

    return load


def _counts(keys: pd.Series[Any], index: pd.Index[Any]) -> pd.Series[int]:
    # value_counts, then 0 for owners nothing points at: AllenSDK's count_owned.
    return keys.value_counts().reindex(index, fill_value=0).astype("int64")


def _uniques(owners: pd.DataFrame, key: str, index: pd.Index[Any]) -> pd.Series[Any]:
    """For each id in ``index``, its distinct acronyms in order of first appearance, NaN included."""
    seen = owners[[key, _ACRONYM]].drop_duplicates()
    lists: dict[Any, list[Any]] = {}
    for owner, acronym in zip(seen[key].tolist(), seen[_ACRONYM].tolist(), strict=True):
        lists.setdefault(owner, []).append(acronym if isinstance(acronym, str) else float("nan"))
    return pd.Series([lists.get(owner, []) for owner in index], index=index, dtype=object)


class Views:
    """AllenSDK's tables over raw tables from a :data:`Loader`, each computed at most once."""

    # The unit and channel columns enough to count units and list structures.
    COUNT_UNIT_COLUMNS: ClassVar[tuple[str, ...]] = ("ecephys_channel_id",) + UnitFilter().columns
    OWNER_CHANNEL_COLUMNS: ClassVar[tuple[str, ...]] = ("ecephys_probe_id", _ACRONYM)

    def __init__(self, loader: Loader) -> None:
        self._loader = loader
        self._raw: dict[str, pd.DataFrame] = {}
        self._raw_columns: dict[str, frozenset[str] | None] = {}
        self._annotated_probes: pd.DataFrame | None = None
        self._channel_owners: pd.DataFrame | None = None
        self._annotated_channels: pd.DataFrame | None = None
        self._counted_units: pd.DataFrame | None = None
        self._default_units: pd.DataFrame | None = None

    @classmethod
    def from_cache(cls, root: Path) -> Views:
        """Views over the CSVs of the AllenSDK cache at ``root``."""
        return cls(cache_loader(root))

    # ------------------------------------------------------------------------------ raw tables

    def _table(self, name: str, columns: Sequence[str] | None = None, *, required: Sequence[str] = ()) -> pd.DataFrame:
        have = self._raw_columns.get(name, frozenset())
        if name not in self._raw or not (have is None or (columns is not None and set(columns) <= have)):
            self._raw[name] = self._loader(name, None if columns is None else list(columns))
            self._raw_columns[name] = None if columns is None else frozenset(columns)
        frame = self._raw[name]
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise CacheError(f"{name}.csv has no column {', '.join(missing)}", hint=_REFETCH_HINT)
        return frame

    def _sessions(self) -> pd.DataFrame:
        return self._table("sessions")

    # ------------------------------------------------------------------------- joined tables

    def _probes_annotated(self) -> pd.DataFrame:
        if self._annotated_probes is None:
            probes = self._table("probes", required=("ecephys_session_id",))
            # AllenSDK shows the rate of the LFP file, after temporal subsampling.
            if {"lfp_sampling_rate", "lfp_temporal_subsampling_factor"} <= set(probes.columns):
                probes = probes.assign(lfp_sampling_rate=probes["lfp_sampling_rate"] / probes["lfp_temporal_subsampling_factor"])
            self._annotated_probes = pd.merge(
                probes, self._sessions(), left_on="ecephys_session_id", right_index=True, suffixes=("_probe", "_session")
            )
        return self._annotated_probes

    def _channels_annotated(self) -> pd.DataFrame:
        if self._annotated_channels is None:
            channels = self._table("channels", required=self.OWNER_CHANNEL_COLUMNS)
            self._annotated_channels = pd.merge(
                channels, self._probes_annotated(), left_on="ecephys_probe_id", right_index=True, suffixes=("_channel", "_probe")
            )
        return self._annotated_channels

    def _owners(self) -> pd.DataFrame:
        """Channel id → probe, session and acronym, in the order of the annotated channels."""
        if self._channel_owners is None:
            if self._annotated_channels is not None:
                self._channel_owners = self._annotated_channels[["ecephys_probe_id", "ecephys_session_id", _ACRONYM]]
            else:
                channels = self._table("channels", self.OWNER_CHANNEL_COLUMNS, required=self.OWNER_CHANNEL_COLUMNS)
                sessions = self._probes_annotated()["ecephys_session_id"]
                # The inner join with the annotated probes, done as a lookup: same rows, same order.
                kept = channels[channels["ecephys_probe_id"].isin(sessions.index)]
                self._channel_owners = pd.DataFrame(
                    {
                        "ecephys_probe_id": kept["ecephys_probe_id"],
                        "ecephys_session_id": kept["ecephys_probe_id"].map(sessions),
                        _ACRONYM: kept[_ACRONYM],
                    }
                )
        return self._channel_owners

    def _counted(self) -> pd.DataFrame:
        """The default-filtered units joined to their channel: channel, probe and session ids."""
        if self._counted_units is None:
            keys = ["ecephys_channel_id", "ecephys_probe_id", "ecephys_session_id"]
            if self._default_units is not None:
                self._counted_units = self._default_units[keys]
            else:
                units = self._table("units", self.COUNT_UNIT_COLUMNS, required=("ecephys_channel_id",))
                channels = UnitFilter().apply(units)["ecephys_channel_id"]
                owners = self._owners()
                kept = channels[channels.isin(owners.index)]
                self._counted_units = pd.DataFrame(
                    {
                        "ecephys_channel_id": kept,
                        "ecephys_probe_id": kept.map(owners["ecephys_probe_id"]),
                        "ecephys_session_id": kept.map(owners["ecephys_session_id"]),
                    }
                )
        return self._counted_units

    def _units(self, unit_filter: UnitFilter) -> pd.DataFrame:
        if unit_filter.is_default and self._default_units is not None:
            return self._default_units
        units = self._table("units", required=("ecephys_channel_id",)).rename(columns=dict(UNIT_RENAMES))
        joined = pd.merge(
            unit_filter.apply(units),
            self._channels_annotated(),
            left_on="ecephys_channel_id",
            right_index=True,
            suffixes=("_unit", "_channel"),
        ).drop(columns=list(UNIT_SUPPRESS), errors="ignore")
        if unit_filter.is_default:
            self._default_units = joined
        return joined

    # ---------------------------------------------------------------------------------- views

    def session_types(self) -> tuple[str, ...]:
        """The session types in the sessions table, in order of first appearance."""
        sessions = self._table("sessions", required=("session_type",))
        return tuple(str(t) for t in sessions["session_type"].dropna().unique())

    def sessions(self) -> pd.DataFrame:
        """``get_session_table()``: one row per session, with unit, channel and probe counts."""
        sessions = self._sessions().drop(columns=list(SESSION_SUPPRESS), errors="ignore")
        owners = self._owners()
        sessions = sessions.assign(
            unit_count=_counts(self._counted()["ecephys_session_id"], sessions.index),
            channel_count=_counts(owners["ecephys_session_id"], sessions.index),
            probe_count=_counts(self._probes_annotated()["ecephys_session_id"], sessions.index),
        )
        sessions[_ACRONYMS] = _uniques(owners, "ecephys_session_id", sessions.index)
        return sessions.rename(columns={"genotype": "full_genotype"})

    def probes(self) -> pd.DataFrame:
        """``get_probes()``: one row per probe, LFP rate after subsampling, with counts."""
        owners = self._owners()
        probes = self._probes_annotated().drop(columns=list(PROBE_SUPPRESS), errors="ignore")
        probes = probes.assign(
            unit_count=_counts(self._counted()["ecephys_probe_id"], probes.index),
            channel_count=_counts(owners["ecephys_probe_id"], probes.index),
        )
        probes[_ACRONYMS] = _uniques(owners, "ecephys_probe_id", probes.index)
        return probes

    def channels(self) -> pd.DataFrame:
        """``get_channels()``: one row per channel, with its probe's columns and its unit count."""
        channels = self._channels_annotated().drop(columns=list(CHANNEL_SUPPRESS), errors="ignore")
        channels = channels.assign(unit_count=_counts(self._counted()["ecephys_channel_id"], channels.index))
        return channels.rename(columns={"name": "probe_name"})

    def units(self, unit_filter: UnitFilter = UnitFilter()) -> pd.DataFrame:
        """``get_units()``: the units that pass ``unit_filter``, joined with channel, probe and session."""
        return self._units(unit_filter).copy()

    def metrics(self, session_type: str, metrics_frame: pd.DataFrame, unit_filter: UnitFilter = UnitFilter()) -> pd.DataFrame:
        """``get_unit_analysis_metrics_by_session_type()``: the units joined (inner) with a type's metrics.

        ``metrics_frame`` is that type's raw ``<type>_analysis_metrics.csv``, indexed by ``ecephys_unit_id``.
        """
        known = self.session_types()
        if session_type not in known:
            raise UsageError(f"unknown session type {session_type!r} (known session types: {', '.join(known)})")
        joined = pd.merge(self._units(unit_filter), metrics_frame, left_index=True, right_index=True, how="inner")
        return joined.rename_axis("ecephys_unit_id")


def filter_by(
    frame: pd.DataFrame,
    *,
    session_ids: Iterable[int] = (),
    probe_ids: Iterable[int] = (),
    structures: Iterable[str] = (),
) -> pd.DataFrame:
    """Rows of a view that belong to any of the sessions, any of the probes and any of the structures.

    Each non-empty criterion must hold (AND across criteria, OR within one). Ids are matched on
    the ``ecephys_session_id``/``ecephys_probe_id`` column, or on the index of the table whose rows
    they are (sessions, probes). Structures match ``ecephys_structure_acronym`` (channels, units) or
    membership in ``ecephys_structure_acronyms`` (sessions, probes), case-sensitively.
    """
    sessions, probes, wanted = list(session_ids), list(probe_ids), set(structures)
    keep = np.ones(len(frame), dtype=bool)
    if sessions:
        # The sessions view is the one without an ecephys_session_id column: its index is the id.
        ids = frame["ecephys_session_id"] if "ecephys_session_id" in frame.columns else frame.index
        keep &= np.asarray(ids.isin(sessions))
    if probes:
        if "ecephys_probe_id" in frame.columns:
            keep &= np.asarray(frame["ecephys_probe_id"].isin(probes))
        elif "ecephys_session_id" in frame.columns:
            keep &= np.asarray(frame.index.isin(probes))
        else:
            raise ValueError("the sessions table has no probe ids")
    if wanted:
        if _ACRONYM in frame.columns:
            keep &= np.asarray(frame[_ACRONYM].isin(wanted))
        elif _ACRONYMS in frame.columns:
            keep &= np.fromiter((not wanted.isdisjoint(a) for a in frame[_ACRONYMS]), dtype=bool, count=len(frame))
        else:
            raise ValueError("this table has no structure acronyms")
    return frame[keep]

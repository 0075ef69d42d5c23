"""The metadata side of a cache: fetch the tables once, then answer every table command offline.

:class:`Catalog` keeps ``sessions.csv``, ``probes.csv``, ``channels.csv``, ``units.csv``, the
analysis-metrics CSVs and ``manifest.json`` in a cache directory exactly as AllenSDK writes them.
A table that is already there is read from disk and never fetched again unless asked
(``refresh``); a table that is missing is fetched from the configured source (the warehouse's
RMA queries or the S3 mirror's copies), checked, and written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ecephys_dl.errors import SourceError
from ecephys_dl.layout import METADATA_TABLES, SESSION_TYPES, CacheLayout, write_atomic
from ecephys_dl.manifest import check_manifest, ensure_manifest
from ecephys_dl.targets import MetadataSource

if TYPE_CHECKING:
    import pandas as pd

    from ecephys_dl.views import Views

__all__ = [
    "RAW_HEADERS",
    "Catalog",
]

# The header of each raw CSV as AllenSDK writes it (PROTOCOL.md §5); units.csv only starts with id.
RAW_HEADERS: dict[str, tuple[str, ...]] = {
    "sessions": ("id", "date_of_acquisition", "isi_experiment_id", "published_at", "specimen_id", "session_type",
                 "age_in_days", "sex", "genotype", "has_nwb"),
    "probes": ("id", "air_channel_index", "ecephys_session_id", "lfp_sampling_rate", "lfp_temporal_subsampling_factor",
               "name", "phase", "sampling_rate", "surface_channel_index", "has_lfp_data"),
    "channels": ("id", "ecephys_probe_id", "local_index", "probe_horizontal_position", "probe_vertical_position",
                 "anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate", "left_right_ccf_coordinate",
                 "ecephys_structure_id", "ecephys_structure_acronym"),
    "units": ("id",),
}  # fmt: skip


def _check_csv(data: bytes, *, what: str, index_col: str, header: Sequence[str]) -> None:
    """A fetched CSV must parse, have the expected header and at least one row.

    Checked with the csv module (pandas takes longer to import than a fetch takes to start):
    UTF-8, a header that starts with ``header`` and names ``index_col``, and no row longer than
    the header (what ``pandas.read_csv`` refuses; shorter rows it fills with NaN).
    """
    import csv

    head = data[:4096].lstrip()
    if head[:1] in (b"<", b"{") or not data:
        raise SourceError(f"the {what} answer is not a CSV table (it starts with {head[:40]!r})", hint="try again later")
    try:
        rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        columns = next(rows, [])
        count = 0
        for number, row in enumerate(rows, start=2):
            if len(row) > len(columns):
                raise ValueError(f"line {number} has {len(row)} fields, the header {len(columns)}")
            count += 1 if row else 0
    except (ValueError, csv.Error) as error:  # UnicodeDecodeError is a ValueError
        raise SourceError(f"the {what} table cannot be read as CSV: {error}") from error
    if index_col not in columns or tuple(columns[: len(header)]) != tuple(header):
        raise SourceError(f"the {what} table has columns {columns[:12]} where {list(header)} were expected")
    if not count:
        raise SourceError(f"the {what} table has no rows")


class Catalog:
    """The metadata tables of one cache directory, fetched on first use."""

    def __init__(self, cache: CacheLayout | Path, source_factory: Callable[[], MetadataSource] | None = None) -> None:
        self.layout = cache if isinstance(cache, CacheLayout) else CacheLayout(Path(cache))
        self._source_factory = source_factory
        self._source: MetadataSource | None = None

    def _get_source(self) -> MetadataSource:
        if self._source is None:
            if self._source_factory is None:
                raise SourceError("the metadata tables are not in the cache and no source is configured")
            self._source = self._source_factory()
        return self._source

    def missing(self, tables: Iterable[str] = METADATA_TABLES) -> list[str]:
        """The tables not yet in the cache."""
        return [t for t in tables if not self.layout.table(t).is_file()]

    def ensure(self, tables: Iterable[str] = METADATA_TABLES, *, refresh: bool = False) -> list[str]:
        """Fetch the tables that are missing (all of them with ``refresh``); return the ones fetched."""
        wanted = list(tables)
        todo = wanted if refresh else self.missing(wanted)
        if todo or not self.layout.manifest.exists():
            ensure_manifest(self.layout)
        else:
            check_manifest(self.layout.manifest)
        for table in todo:
            data = self._get_source().table_csv(table)
            _check_csv(data, what=table, index_col="id", header=RAW_HEADERS[table])
            write_atomic(self.layout.table(table), data)
        return todo

    def ensure_metrics(self, session_type: str, *, refresh: bool = False) -> bool:
        """Fetch one session type's analysis-metrics CSV if missing; True if fetched."""
        if session_type not in SESSION_TYPES:
            raise ValueError(f"unknown session type {session_type!r}")
        return self._ensure_metrics_file(
            self.layout.typewise_metrics(session_type), lambda: self._get_source().metrics_csv(session_type), f"{session_type} metrics", refresh
        )

    def ensure_session_metrics(self, session_id: int, *, refresh: bool = False) -> bool:
        """Fetch one session's analysis-metrics CSV (AllenSDK reads it with the session) if missing."""
        return self._ensure_metrics_file(
            self.layout.session_metrics(session_id), lambda: self._get_source().session_metrics_csv(session_id), f"session {session_id} metrics", refresh
        )

    def _ensure_metrics_file(self, path: Path, fetch: Callable[[], bytes], what: str, refresh: bool) -> bool:
        if path.is_file() and not refresh:
            return False
        data = fetch()
        _check_csv(data, what=what, index_col="ecephys_unit_id", header=("ecephys_unit_id",))
        write_atomic(path, data)
        return True

    def views(self) -> Views:
        """The AllenSDK views over the cached CSVs (read lazily, each at most once)."""
        from ecephys_dl.views import Views, read_table

        def load(table: str, usecols: Sequence[str] | None = None) -> pd.DataFrame:
            return read_table(self.layout.table(table), usecols=usecols)

        return Views(load)

    def metrics_frame(self, session_type: str) -> pd.DataFrame:
        """The raw analysis-metrics table of a session type, from the cache."""
        from ecephys_dl.views import read_table

        return read_table(self.layout.typewise_metrics(session_type), index_col="ecephys_unit_id")

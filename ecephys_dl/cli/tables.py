"""The table commands: sessions, probes, channels, units and metrics, as AllenSDK shows them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import click

from ecephys_dl.cli.app import CONTEXT_SETTINGS, cli, quiet_broken_pipe, settings_of
from ecephys_dl.cli.options import id_filter_options, output_options, quality_options, selection_from, selection_options, unit_filter_from
from ecephys_dl.config import Settings
from ecephys_dl.layout import SESSION_TYPES

if TYPE_CHECKING:
    import pandas as pd

    from ecephys_dl.catalog import Catalog
    from ecephys_dl.targets import MetadataSource
    from ecephys_dl.views import Views

__all__ = ["emit", "open_catalog"]


@contextmanager
def open_catalog(settings: Settings) -> Iterator[Catalog]:
    """The cache's catalog; a source (and its HTTP client) is only made if a table must be fetched."""
    from ecephys_dl.catalog import Catalog
    from ecephys_dl.progress import rma_progress
    from ecephys_dl.sources import resolver_for

    with ExitStack() as stack:

        def make_source() -> MetadataSource:
            client = stack.enter_context(settings.client())
            return resolver_for(settings, client, progress=stack.enter_context(rma_progress()))

        yield Catalog(settings.layout, make_source)


def emit(frame: pd.DataFrame, *, fmt: str | None, columns: str | None, what: str) -> None:
    """Print a table to stdout in the chosen format; an empty result is a note, not an error."""
    from ecephys_dl.ui import OutputFormat, note, pick_columns, render_frame

    if columns:
        frame = pick_columns(frame, [c.strip() for c in columns.split(",") if c.strip()])
    chosen = OutputFormat(fmt) if fmt else (OutputFormat.TABLE if sys.stdout.isatty() else OutputFormat.CSV)
    if frame.empty:
        note(f"no {what} match the filters")
        if chosen is OutputFormat.TABLE:
            return
    try:
        render_frame(frame, chosen, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_broken_pipe()


@cli.command(context_settings=CONTEXT_SETTINGS)
@selection_options
@output_options
@click.pass_context
def sessions(ctx: click.Context, /, fmt: str | None, columns: str | None, refresh: bool, **selection: Any) -> None:
    """List the sessions, as AllenSDK's get_session_table() shows them.

    The metadata tables are fetched into the cache on first use; afterwards this works offline.

    \b
    Examples:
      ecephys-dl sessions --genotype Sst
      ecephys-dl sessions --sex M --genotype Sst --session-type brain_observatory_1.1 --structure VISl
      ecephys-dl sessions --genotype Vip --format ids | xargs ecephys-dl fetch
      ecephys-dl sessions --format json --columns session_type,unit_count
    """
    chosen = selection_from(selection)
    with open_catalog(settings_of(ctx)) as catalog:
        catalog.ensure(refresh=refresh)
        frame = chosen.apply(catalog.views().sessions())
    emit(frame, fmt=fmt, columns=columns, what="sessions")


def _table_command(name: str, view: Callable[[Views, Mapping[str, Any]], pd.DataFrame], doc: str, *, units: bool = False) -> None:
    def command(ctx: click.Context, fmt: str | None, columns: str | None, refresh: bool, sessions: Sequence[int], probes: Sequence[int], structures: Sequence[str], **rest: Any) -> None:
        from ecephys_dl.views import filter_by

        with open_catalog(settings_of(ctx)) as catalog:
            catalog.ensure(refresh=refresh)
            frame = view(catalog.views(), rest)
        frame = filter_by(frame, session_ids=tuple(sessions), probe_ids=tuple(probes), structures=tuple(structures))
        emit(frame, fmt=fmt, columns=columns, what=name)

    command.__doc__ = doc
    command.__name__ = name
    decorated: Any = click.pass_context(command)
    decorated = output_options(decorated)
    decorated = id_filter_options(decorated)
    if units:
        decorated = quality_options(decorated)
    cli.command(name, context_settings=CONTEXT_SETTINGS)(decorated)


_table_command(
    "probes",
    lambda views, _: views.probes(),
    """List the probes, as AllenSDK's get_probes() shows them.

    \b
    Examples:
      ecephys-dl probes --session 715093703
      ecephys-dl probes --structure VISp --format ids
    """,
)
_table_command(
    "channels",
    lambda views, _: views.channels(),
    """List the channels, as AllenSDK's get_channels() shows them.

    \b
    Examples:
      ecephys-dl channels --probe 729445648
      ecephys-dl channels --session 715093703 --structure CA1 --format csv
    """,
)
_table_command(
    "units",
    lambda views, opts: views.units(unit_filter_from(opts)),
    """List the units, as AllenSDK's get_units() shows them, with its quality filters.

    By default only units with amplitude_cutoff <= 0.1, presence_ratio >= 0.95,
    isi_violations <= 0.5 and quality "good" are listed (all inclusive).

    \b
    Examples:
      ecephys-dl units --session 715093703 --structure VISp
      ecephys-dl units --presence-ratio-min 0.9 --format csv > units.csv
      ecephys-dl units --no-quality-filter --format ids | wc -l
    """,
    units=True,
)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("session_type", metavar="SESSION_TYPE")
@quality_options
@click.option("--session", "sessions", type=int, multiple=True, metavar="ID", help="Only units of this session (repeatable).")
@output_options
@click.pass_context
def metrics(ctx: click.Context, /, session_type: str, fmt: str | None, columns: str | None, refresh: bool, sessions: Sequence[int], **quality: Any) -> None:
    """List the analysis metrics of every unit of one session type.

    SESSION_TYPE is brain_observatory_1.1 or functional_connectivity. As in AllenSDK's
    get_unit_analysis_metrics_by_session_type(), the metrics are joined onto the units table
    and the same quality filters apply.

    \b
    Examples:
      ecephys-dl metrics brain_observatory_1.1 --columns g_dsi_dg,pref_ori_dg
      ecephys-dl metrics functional_connectivity --no-quality-filter --format csv > fc.csv
    """
    from ecephys_dl.errors import UsageError
    from ecephys_dl.views import filter_by

    if session_type not in SESSION_TYPES:
        raise UsageError(f"unknown session type {session_type!r}", hint=f"choose one of: {', '.join(SESSION_TYPES)}")
    with open_catalog(settings_of(ctx)) as catalog:
        catalog.ensure(refresh=refresh)
        catalog.ensure_metrics(session_type, refresh=refresh)
        frame = catalog.views().metrics(session_type, catalog.metrics_frame(session_type), unit_filter_from(quality))
    frame = filter_by(frame, session_ids=tuple(sessions))
    emit(frame, fmt=fmt, columns=columns, what="units")

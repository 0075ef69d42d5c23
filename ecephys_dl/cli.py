"""The ``ecephys-dl`` command line: the only module that imports click.

It parses arguments, calls the core, and turns :class:`~ecephys_dl.errors.EcephysDlError` into a
message on stderr and the exit code the error carries, in one place (:func:`main`). Heavy modules
(pandas, h5py, rich, httpx) are imported inside the commands so ``--help`` and completion stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ecephys_dl import __version__
from ecephys_dl.config import DEFAULT_S3_URL, DEFAULT_WAREHOUSE_URL, ENV, Settings, Source, default_cache_dir
from ecephys_dl.errors import EcephysDlError, ExitCode
from ecephys_dl.layout import SESSION_TYPES

if TYPE_CHECKING:
    import pandas as pd

    from ecephys_dl.catalog import Catalog
    from ecephys_dl.select import SessionSelection
    from ecephys_dl.views import UnitFilter

__all__ = ["cli", "main"]

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
FORMATS = ("table", "csv", "tsv", "json", "ids")

EXIT_CODES_HELP = """\b
Exit codes:
  0    everything asked for is done
  1    something failed (files, checks, a server answer)
  2    usage error (bad option, unknown id)
  3    another run holds the cache lock
  4    not enough free disk space
  5    source unreachable (temporary: try again later)
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM)
"""


@click.group(context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, "-V", "--version", prog_name="ecephys-dl")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ENV["cache_dir"],
    show_envvar=True,
    help="The AllenSDK cache directory (holds manifest.json).  [default: ~/.local/share/ecephys-dl/cache]",
)
@click.option(
    "--source",
    type=click.Choice([s.value for s in Source]),
    default=Source.WAREHOUSE.value,
    envvar=ENV["source"],
    show_envvar=True,
    show_default=True,
    help="Where metadata and files come from: the Allen warehouse or its S3 mirror.",
)
@click.option("--warehouse-url", default=DEFAULT_WAREHOUSE_URL, envvar=ENV["warehouse_url"], show_envvar=True, show_default=True, help="Base URL of the Allen warehouse.")
@click.option("--s3-url", default=DEFAULT_S3_URL, envvar=ENV["s3_url"], show_envvar=True, show_default=True, help="Base URL of the S3 bucket.")
@click.option("--retries", type=click.IntRange(0, 100), default=5, envvar=ENV["retries"], show_envvar=True, show_default=True, help="Retries of a request that failed for a passing reason.")
@click.option("--retry-wait", type=click.FloatRange(0, 3600), default=1.0, envvar=ENV["retry_wait"], show_envvar=True, show_default=True, help="Seconds before the first retry (doubling each time, or the server's Retry-After).")
@click.option("--timeout", type=click.FloatRange(0.1, 86400), default=60.0, envvar=ENV["timeout"], show_envvar=True, show_default=True, help="Seconds a request may wait for the server before it counts as failed.")
@click.option("--debug", is_flag=True, envvar=ENV["debug"], show_envvar=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, cache_dir: Path | None, source: str, warehouse_url: str, s3_url: str, retries: int, retry_wait: float, timeout: float, debug: bool) -> None:
    """Download the Allen Visual Coding - Neuropixels dataset into an AllenSDK-compatible cache.

    \b
    Examples:
      ecephys-dl --cache-dir /data/ecephys sessions --genotype Sst
      ecephys-dl sessions --sex M --genotype Sst --session-type brain_observatory_1.1 --structure VISl
      ecephys-dl units --session 715093703 --format csv > units.csv
      ECEPHYS_DL_SOURCE=s3 ecephys-dl probes --format json
    """
    ctx.obj = Settings(
        cache_dir=(cache_dir or default_cache_dir()).expanduser(),
        source=Source(source),
        warehouse_url=warehouse_url.rstrip("/"),
        s3_url=s3_url.rstrip("/"),
        retries=retries,
        retry_wait=retry_wait,
        timeout=timeout,
        debug=debug,
    )


# ------------------------------------------------------------------------------------ shared pieces


def selection_options(func: F) -> F:
    """The session filters, shared by every command that selects sessions."""
    options = [
        click.option("--id", "ids", type=int, multiple=True, metavar="ID", help="Only this session id (repeatable)."),
        click.option("--genotype", metavar="TEXT", help="Genotype contains TEXT (case-insensitive), e.g. Sst, Vip, Pvalb, wt."),
        click.option("--sex", type=click.Choice(["M", "F"], case_sensitive=False), help="Donor sex."),
        click.option("--session-type", type=click.Choice(SESSION_TYPES), help="Stimulus set shown in the session."),
        click.option("--structure", "structures", multiple=True, metavar="ACRONYM", help="Sessions that recorded this structure (repeatable: all of them)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def selection_from(kwargs: dict[str, Any]) -> SessionSelection:
    """The :class:`SessionSelection` the selection options describe."""
    from ecephys_dl.select import SessionSelection

    sex = kwargs.get("sex")
    return SessionSelection(
        ids=tuple(kwargs.get("ids") or ()),
        genotype=kwargs.get("genotype"),
        sex=sex.upper() if sex else None,
        session_type=kwargs.get("session_type"),
        structures=tuple(kwargs.get("structures") or ()),
    )


def output_options(func: F) -> F:
    """--format, --columns and --refresh of the table commands."""
    options = [
        click.option("--format", "fmt", type=click.Choice(FORMATS), help="Output format.  [default: table on a terminal, csv otherwise]"),
        click.option("--columns", metavar="A,B,...", help="Only these columns, in this order."),
        click.option("--refresh", is_flag=True, help="Fetch the metadata tables again even if they are cached."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def quality_options(func: F) -> F:
    """AllenSDK's default unit quality filters, each adjustable."""
    options = [
        click.option("--amplitude-cutoff-max", type=float, default=0.1, show_default=True, help="Keep units with amplitude_cutoff <= this."),
        click.option("--presence-ratio-min", type=float, default=0.95, show_default=True, help="Keep units with presence_ratio >= this."),
        click.option("--isi-violations-max", type=float, default=0.5, show_default=True, help="Keep units with isi_violations <= this."),
        click.option("--no-quality-filter", is_flag=True, help="Keep every unit (no thresholds, noise units too)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def unit_filter_from(kwargs: dict[str, Any]) -> UnitFilter:
    from ecephys_dl.views import UnitFilter

    if kwargs.get("no_quality_filter"):
        return UnitFilter.NONE
    return UnitFilter(
        amplitude_cutoff_max=kwargs["amplitude_cutoff_max"],
        presence_ratio_min=kwargs["presence_ratio_min"],
        isi_violations_max=kwargs["isi_violations_max"],
    )


def id_filter_options(func: F) -> F:
    """--session, --probe and --structure of the probe, channel and unit tables."""
    options = [
        click.option("--session", "sessions", type=int, multiple=True, metavar="ID", help="Only this session (repeatable)."),
        click.option("--probe", "probes", type=int, multiple=True, metavar="ID", help="Only this probe (repeatable)."),
        click.option("--structure", "structures", multiple=True, metavar="ACRONYM", help="Only this structure (repeatable)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@contextmanager
def open_catalog(settings: Settings) -> Iterator[Catalog]:
    """The cache's catalog; a source (and its HTTP client) is only made if a table must be fetched."""
    from ecephys_dl.catalog import Catalog, S3Source, WarehouseSource
    from ecephys_dl.ui import rma_progress

    with ExitStack() as stack:

        def make_source() -> Any:
            from ecephys_dl.http import RetryPolicy, make_client

            client = stack.enter_context(make_client(read_timeout=settings.timeout))
            policy = RetryPolicy(attempts=settings.retries + 1, backoff=settings.retry_wait)
            if settings.source is Source.S3:
                from ecephys_dl.s3 import S3Client

                return S3Source(S3Client(settings.s3_url, client=client, policy=policy))
            from ecephys_dl.rma import RmaClient

            progress = stack.enter_context(rma_progress())
            rma = RmaClient(settings.warehouse_url, client=client, policy=policy, page_timeout=settings.timeout)
            return WarehouseSource(rma, progress=progress)

        yield Catalog(settings.cache_dir, make_source)


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
        _quiet_broken_pipe()


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.find_root().obj
    return settings


# -------------------------------------------------------------------------------------- commands


@cli.command(context_settings=CONTEXT_SETTINGS)
@selection_options
@output_options
@click.pass_context
def sessions(ctx: click.Context, fmt: str | None, columns: str | None, refresh: bool, **selection: Any) -> None:
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
    with open_catalog(_settings(ctx)) as catalog:
        catalog.ensure(refresh=refresh)
        frame = chosen.apply(catalog.views().sessions())
    emit(frame, fmt=fmt, columns=columns, what="sessions")


def _table_command(name: str, view: Callable[[Any, dict[str, Any]], pd.DataFrame], doc: str, *, units: bool = False) -> None:
    def command(ctx: click.Context, fmt: str | None, columns: str | None, refresh: bool, sessions: Sequence[int], probes: Sequence[int], structures: Sequence[str], **rest: Any) -> None:
        from ecephys_dl.views import filter_by

        with open_catalog(_settings(ctx)) as catalog:
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
def metrics(ctx: click.Context, session_type: str, fmt: str | None, columns: str | None, refresh: bool, sessions: Sequence[int], **quality: Any) -> None:
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
    with open_catalog(_settings(ctx)) as catalog:
        catalog.ensure(refresh=refresh)
        catalog.ensure_metrics(session_type, refresh=refresh)
        frame = catalog.views().metrics(session_type, catalog.metrics_frame(session_type), unit_filter_from(quality))
    frame = filter_by(frame, session_ids=tuple(sessions))
    emit(frame, fmt=fmt, columns=columns, what="units")


# ------------------------------------------------------------------------------------------ entry


def main(argv: list[str] | None = None) -> None:
    """Run the command line and exit with the documented exit code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="ecephys-dl", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as error:
        error.show()
        sys.exit(ExitCode.USAGE if error.exit_code == 2 else error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except EcephysDlError as error:
        if "--debug" in args:
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except BrokenPipeError:
        _quiet_broken_pipe()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    sys.exit(ExitCode.OK)


def _quiet_broken_pipe() -> None:
    """`ecephys-dl units | head`: the reader went away, which is not an error.

    Point stdout at /dev/null so the interpreter's final flush does not fail again.
    """
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(ExitCode.OK)

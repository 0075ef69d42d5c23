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
    # `fetch` takes session ids as arguments too; `sessions` only as --id.
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


def transfer_options(func: F) -> F:
    """How files are transferred; each option has an environment variable."""
    options = [
        click.option("--connections", type=click.IntRange(1, 64), default=4, show_default=True, envvar="ECEPHYS_DL_CONNECTIONS", show_envvar=True, help="Ranged connections per file."),
        click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, envvar="ECEPHYS_DL_JOBS", show_envvar=True, help="Files fetched at once."),
        click.option("--max-connections", type=click.IntRange(1, 256), default=16, show_default=True, envvar="ECEPHYS_DL_MAX_CONNECTIONS", show_envvar=True, help="Open connections in all, across files."),
        click.option("--stall-timeout", type=click.FloatRange(0.1, 86400), default=60.0, show_default=True, envvar="ECEPHYS_DL_STALL_TIMEOUT", show_envvar=True, help="Seconds without a byte before a connection is dropped and its range resumed."),
        click.option("--min-speed", metavar="SIZE", default="0", show_default=True, envvar="ECEPHYS_DL_MIN_SPEED", show_envvar=True, help="Bytes/s under which a connection (over a minute) is dropped and resumed; 0 = off."),
        click.option("--limit-rate", metavar="SIZE", default=None, envvar="ECEPHYS_DL_LIMIT_RATE", show_envvar=True, help="Cap on the total bandwidth, e.g. 20M (bytes/s)."),
        click.option("--reserve", metavar="SIZE", default="1G", show_default=True, envvar="ECEPHYS_DL_RESERVE", show_envvar=True, help="Disk space to leave free."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("session_ids", nargs=-1, type=int, metavar="[SESSION_ID]...")
@selection_options
@click.option("--all", "all_sessions", is_flag=True, help="Every session of the dataset.")
@click.option("--with-lfp", is_flag=True, help="Also each selected session's probe LFP files.")
@click.option("--lfp-only", is_flag=True, help="Only the probe LFP files, not the session files.")
@click.option("--probe", "probe_ids", type=int, multiple=True, metavar="ID", help="Only this probe's LFP file (repeatable; implies --with-lfp).")
@click.option("--dry-run", is_flag=True, help="Print the plan (files, sizes, what is already there) and exit.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), help="Plan and summary format.  [default: table]")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the final summary.")
@transfer_options
@click.pass_context
def fetch(ctx: click.Context, session_ids: Sequence[int], all_sessions: bool, with_lfp: bool, lfp_only: bool,
          probe_ids: Sequence[int], dry_run: bool, fmt: str | None, quiet: bool, **options: Any) -> None:  # fmt: skip
    """Download session NWB files (and probe LFP files) into the cache, resumably, verified.

    Choose sessions by id, by the same filters as `sessions`, or --all. Each file is written
    to <name>.part, resumed across runs with HTTP ranges, fetched over several connections,
    verified (size, HDF5 end of file, h5py, NWB identifier) and only then renamed into place.

    \b
    Examples:
      ecephys-dl fetch 715093703
      ecephys-dl fetch --genotype Sst --session-type brain_observatory_1.1 --with-lfp
      ecephys-dl fetch --all --dry-run
      ecephys-dl fetch --all --with-lfp --limit-rate 20M --jobs 4 --connections 4
      ecephys-dl sessions --genotype Vip --format ids | xargs ecephys-dl fetch
    """
    from ecephys_dl.errors import UsageError
    from ecephys_dl.fetch import FetchRequest

    settings = _settings(ctx)
    selection = selection_from({**options, "ids": (*session_ids, *options.get("ids", ()))})
    if selection.is_empty and not all_sessions:
        raise UsageError("choose the sessions to fetch", hint="give session ids, filters such as --genotype Sst, or --all")
    request = FetchRequest(
        selection=selection,
        all_sessions=all_sessions,
        with_lfp=with_lfp or lfp_only or bool(probe_ids),
        lfp_only=lfp_only,
        probe_ids=tuple(probe_ids),
    )
    limits = {
        "min_speed": _size_option(options["min_speed"], "--min-speed"),
        "limit_rate": _size_option(options["limit_rate"], "--limit-rate") if options["limit_rate"] else None,
        "reserve": _size_option(options["reserve"], "--reserve"),
    }
    code = _run_fetch(settings, request, dry_run=dry_run, fmt=fmt or "table", quiet=quiet, options={**options, **limits})
    if code:
        sys.exit(code)


def _run_fetch(settings: Settings, request: Any, *, dry_run: bool, fmt: str, quiet: bool, options: dict[str, Any]) -> int:
    """The fetch command's steps: plan, check space, transfer with progress, summarise."""
    import json
    import signal

    from ecephys_dl.fetch import fetch_files, prepare
    from ecephys_dl.http import RetryPolicy, make_client
    from ecephys_dl.layout import CacheLayout
    from ecephys_dl.plan import check_free_space
    from ecephys_dl.transfer import Shared, TransferSettings
    from ecephys_dl.ui import fetch_progress, note, render_plan, render_summary

    policy = RetryPolicy(attempts=settings.retries + 1, backoff=settings.retry_wait)
    with open_catalog(settings) as catalog, make_client(read_timeout=options["stall_timeout"], max_connections=options["max_connections"] + 8) as client:
        catalog.ensure()
        prepared = prepare(settings, request, catalog, client, policy)
        for session_id, probe_id in prepared.unavailable:
            note(f"LFP not available for probe {probe_id} of session {session_id} (not a failure)")
        if dry_run:
            if fmt == "json":
                json.dump(prepared.as_dict(), sys.stdout, indent=1)
                sys.stdout.write("\n")
            else:
                render_plan(prepared, sys.stdout)
            return 0
        check_free_space(prepared.planned, settings.cache_dir, options["reserve"])
        failures: list[str] = []
        if not request.lfp_only:
            for session_id in prepared.sessions:
                try:
                    catalog.ensure_session_metrics(session_id)
                except EcephysDlError as error:
                    failures.append(f"session {session_id} metrics: {error}")
                    note(f"failed session_{session_id}_analysis_metrics.csv: {error}")
        shared = Shared(client, max_connections=options["max_connections"], limit_rate=options["limit_rate"])
        transfer = TransferSettings(
            connections=options["connections"], stall_timeout=options["stall_timeout"], min_speed=options["min_speed"], policy=policy
        )
        received: list[int] = []

        def stop(signum: int, _frame: Any) -> None:
            received.append(signum)
            shared.cancel()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with fetch_progress(prepared.to_fetch, quiet=quiet) as listener:
                summary = fetch_files(prepared.planned, CacheLayout(settings.cache_dir), shared=shared, settings=transfer, listener=listener, jobs=options["jobs"])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if fmt == "json":
        json.dump({**summary.as_dict(), "lfp_not_available": prepared.as_dict()["lfp_not_available"], "other_failures": failures}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        render_summary(summary, sys.stdout)
    if received:
        return int(ExitCode.TERMINATED if received[0] == signal.SIGTERM else ExitCode.INTERRUPTED)
    return 0 if summary.ok and not failures else int(ExitCode.FAILED)


def _size_option(text: str, name: str) -> int:
    from ecephys_dl.errors import UsageError
    from ecephys_dl.sizes import parse_size

    try:
        return parse_size(text)
    except UsageError as error:
        raise UsageError(f"{name}: {error.message}", hint=error.hint) from None


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

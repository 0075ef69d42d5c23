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
    from ecephys_dl.verify import VerifyHistory
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
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST", envvar=ENV["allow_host"], show_envvar=True, help="A host download links and redirects may lead to besides the source's own (repeatable).")
@click.option("--ca-bundle", type=click.Path(path_type=Path), envvar=ENV["ca_bundle"], show_envvar=True, help="Verify TLS certificates with this CA bundle (file or directory) instead of the system's.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), envvar=ENV["log_file"], show_envvar=True, help="Append one JSON object per event (run start/end, file started, resumed, retried, verified, failed).")
@click.option("-v", "--verbose", is_flag=True, envvar=ENV["verbose"], show_envvar=True, help="More detail on stderr (e.g. ranges split, servers ignoring ranges).")
@click.option("--debug", is_flag=True, envvar=ENV["debug"], show_envvar=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, cache_dir: Path | None, source: str, warehouse_url: str, s3_url: str, retries: int, retry_wait: float, timeout: float,
        allow_hosts: Sequence[str], ca_bundle: Path | None, log_file: Path | None, verbose: bool, debug: bool) -> None:  # fmt: skip
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
        log_file=log_file,
        verbose=verbose,
        allowed_hosts=_allowed_hosts(allow_hosts),
        ca_bundle=ca_bundle,
    )


def _allowed_hosts(values: Sequence[str]) -> frozenset[str]:
    if not values:
        return frozenset()
    from ecephys_dl.http import normalize_hosts

    # An environment variable may hold several hosts separated by spaces or commas.
    return normalize_hosts([h for value in values for h in value.replace(",", " ").split()])


# ------------------------------------------------------------------------------------ shared pieces


def complete_session_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """TAB completion of session ids from the cached session table (no network, no pandas)."""
    import csv
    import os

    from click.shell_completion import CompletionItem

    root = ctx.find_root().params.get("cache_dir") or os.environ.get(ENV["cache_dir"]) or default_cache_dir()
    table = Path(root).expanduser() / "sessions.csv"
    try:
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return []
    return [
        CompletionItem(row["id"], help=f"{row.get('session_type', '')} {row.get('sex', '')} {row.get('genotype', '')}".strip())
        for row in rows
        if row.get("id", "").startswith(incomplete)
    ]


def selection_options(func: F) -> F:
    """The session filters, shared by every command that selects sessions."""
    options = [
        click.option("--id", "ids", type=int, multiple=True, metavar="ID", shell_complete=complete_session_ids, help="Only this session id (repeatable)."),
        click.option("--genotype", metavar="TEXT", help="Genotype contains TEXT (case-insensitive), e.g. Sst, Vip, Pvalb, wt."),
        click.option("--sex", type=click.Choice(["M", "F"], case_sensitive=False), help="Donor sex."),
        click.option("--session-type", type=click.Choice(SESSION_TYPES), help="Stimulus set shown in the session."),
        click.option("--structure", "structures", multiple=True, metavar="ACRONYM", help="Sessions that recorded this structure (repeatable: all of them)."),
    ]
    # `fetch` takes session ids as arguments too; `sessions` only as --id.
    for option in reversed(options):
        func = option(func)
    return func


def file_selection_options(func: F) -> F:
    """Session ids, the session filters, --all and which files of them: shared by fetch and links."""
    options = [
        click.argument("session_ids", nargs=-1, type=int, metavar="[SESSION_ID]...", shell_complete=complete_session_ids),
        selection_options,
        click.option("--all", "all_sessions", is_flag=True, help="Every session of the dataset."),
        click.option("--with-lfp", is_flag=True, help="Also each selected session's probe LFP files."),
        click.option("--lfp-only", is_flag=True, help="Only the probe LFP files, not the session files."),
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

            client = stack.enter_context(make_client(read_timeout=settings.timeout, verify=settings.tls_verify))
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
@file_selection_options
@click.option("--probe", "probe_ids", type=int, multiple=True, metavar="ID", help="Only this probe's LFP file (repeatable; implies --with-lfp).")
@click.option("--dry-run", is_flag=True, help="Print the plan (files, sizes, what is already there) and exit.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), help="Plan and summary format.  [default: table]")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors and the final summary.")
@click.option("--shard", metavar="K/N", envvar="ECEPHYS_DL_SHARD", show_envvar=True, help="Take only share K of N of the files (N runs, e.g. a job array, fill one cache together).")
@click.option("--max-duration", metavar="DURATION", envvar="ECEPHYS_DL_MAX_DURATION", show_envvar=True, help="Start no new file after this long (e.g. 6h); partials stay for the next run.")
@click.option("--wait", is_flag=True, help="Wait for another run holding the cache's lock instead of exiting with 3.")
@transfer_options
@click.pass_context
def fetch(ctx: click.Context, session_ids: Sequence[int], all_sessions: bool, with_lfp: bool, lfp_only: bool,
          probe_ids: Sequence[int], dry_run: bool, fmt: str | None, quiet: bool, shard: str | None, max_duration: str | None,
          wait: bool, **options: Any) -> None:  # fmt: skip
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
    from ecephys_dl.plan import parse_shard
    from ecephys_dl.sizes import parse_duration

    limits = {
        "shard": parse_shard(shard) if shard else None,
        "max_duration": parse_duration(max_duration) if max_duration else None,
        "wait": wait,
        "min_speed": _size_option(options["min_speed"], "--min-speed"),
        "limit_rate": _size_option(options["limit_rate"], "--limit-rate") if options["limit_rate"] else None,
        "reserve": _size_option(options["reserve"], "--reserve"),
    }
    code = _run_fetch(settings, request, dry_run=dry_run, fmt=fmt or "table", quiet=quiet, options={**options, **limits})
    if code:
        sys.exit(code)


def _run_fetch(settings: Settings, request: Any, *, dry_run: bool, fmt: str, quiet: bool, options: dict[str, Any]) -> int:
    """The fetch command's steps: lock, plan, check space, transfer with progress, summarise."""
    from contextlib import nullcontext

    from ecephys_dl.lock import RunLock
    from ecephys_dl.ui import note

    shard = options["shard"]
    lock_name = "run" if shard is None else f"run-shard-{shard[0]}-of-{shard[1]}"
    command = "ecephys-dl fetch" + (f" --shard {shard[0]}/{shard[1]}" if shard else "")
    lock = nullcontext() if dry_run else RunLock(settings.cache_dir, lock_name, command=command, wait=options["wait"], notes=note)
    with lock:
        return _fetch_locked(settings, request, dry_run=dry_run, fmt=fmt, quiet=quiet, options=options)


def _fetch_locked(settings: Settings, request: Any, *, dry_run: bool, fmt: str, quiet: bool, options: dict[str, Any]) -> int:
    import json
    import signal
    import threading

    from ecephys_dl.events import JsonEventLog, Tee
    from ecephys_dl.fetch import Prepared, fetch_files, prepare
    from ecephys_dl.http import RetryPolicy, make_client
    from ecephys_dl.layout import CacheLayout
    from ecephys_dl.plan import check_free_space, in_shard
    from ecephys_dl.transfer import Shared, TransferSettings
    from ecephys_dl.ui import fetch_progress, note, render_plan, render_summary

    policy = RetryPolicy(attempts=settings.retries + 1, backoff=settings.retry_wait)
    log = JsonEventLog(settings.log_file) if settings.log_file and not dry_run else None
    with open_catalog(settings) as catalog, make_client(read_timeout=options["stall_timeout"], max_connections=options["max_connections"] + 8, verify=settings.tls_verify) as client:
        catalog.ensure()
        prepared = prepare(settings, request, catalog, client, policy)
        if options["shard"]:
            mine = [p for p in prepared.planned if in_shard(p.relative, options["shard"])]
            prepared = Prepared(prepared.sessions, mine, prepared.unavailable)
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
        if log:
            log.emit("run-start", command="fetch", sessions=prepared.sessions, files=len(prepared.planned), bytes_to_fetch=prepared.to_fetch,
                     shard=options["shard"], cache=str(settings.cache_dir))  # fmt: skip
        failures: list[str] = []
        shared = Shared(client, max_connections=options["max_connections"], limit_rate=options["limit_rate"], allowed_hosts=settings.allowed_hosts)
        transfer = TransferSettings(
            connections=options["connections"], stall_timeout=options["stall_timeout"], min_speed=options["min_speed"], policy=policy
        )
        received: list[int] = []
        out_of_time = threading.Event()

        def stop(signum: int, _frame: Any) -> None:
            received.append(signum)
            shared.cancel()

        def time_is_up() -> None:
            out_of_time.set()
            note("--max-duration reached: stopping at a clean point; partials stay for the next run")
            shared.cancel()

        def fetch_metrics() -> None:
            """Each session's metrics CSV (AllenSDK reads it with the session), one after another,
            while the NWB files come down: small requests need not wait for them, nor they for these."""
            for session_id in [] if request.lfp_only else prepared.sessions:
                if shared.cancelled:
                    return
                if options["shard"] and not in_shard(f"session_{session_id}/session_{session_id}_analysis_metrics.csv", options["shard"]):
                    continue
                try:
                    catalog.ensure_session_metrics(session_id)
                except EcephysDlError as error:
                    failures.append(f"session {session_id} metrics: {error}")
                    note(f"failed session_{session_id}_analysis_metrics.csv: {error}")

        metrics = threading.Thread(target=fetch_metrics, name="session metrics", daemon=True)
        budget = threading.Timer(options["max_duration"], time_is_up) if options["max_duration"] else None
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if budget:
                budget.daemon = True
                budget.start()
            metrics.start()
            with fetch_progress(prepared.to_fetch, quiet=quiet) as progress:
                listener = Tee(progress if settings.verbose else _WithoutNotes(progress), log)
                summary = fetch_files(prepared.planned, CacheLayout(settings.cache_dir), shared=shared, settings=transfer, listener=listener, jobs=options["jobs"])
            # A stopped run does not wait for them: each CSV is written atomically, or not at all.
            while metrics.is_alive() and not shared.cancelled:
                metrics.join(0.1)  # in steps, so a signal still reaches its handler
        finally:
            if budget:
                budget.cancel()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    result = {**summary.as_dict(), "lfp_not_available": prepared.as_dict()["lfp_not_available"], "other_failures": failures,
              "stopped_by_max_duration": out_of_time.is_set()}  # fmt: skip
    if log:
        log.emit("run-end", **{k: v for k, v in result.items() if k != "files"})
        log.close()
    if fmt == "json":
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        render_summary(summary, sys.stdout)
        if out_of_time.is_set():
            sys.stdout.write("stopped by --max-duration: run again to continue\n")
    if received:
        return int(ExitCode.TERMINATED if received[0] == signal.SIGTERM else ExitCode.INTERRUPTED)
    return 0 if summary.ok and not failures else int(ExitCode.FAILED)


class _WithoutNotes:
    """A listener's events minus the chatty notes (shown with --verbose)."""

    def __init__(self, listener: Any) -> None:
        self._listener = listener

    def note(self, name: str, message: str) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)


@cli.command(context_settings=CONTEXT_SETTINGS)
@file_selection_options
@click.option("--format", "fmt", type=click.Choice(["urls", "aria2", "csv", "json"]), default="urls", show_default=True, help="Output format.")
@click.pass_context
def links(ctx: click.Context, session_ids: Sequence[int], all_sessions: bool, with_lfp: bool, lfp_only: bool, fmt: str, **selection: Any) -> None:
    """Print the download URLs of a selection, for other download tools.

    The aria2 form carries each file's place in the cache (absolute directories), so `aria2c -i`
    fills the cache's tree, which AllenSDK (and `ecephys-dl verify`) accept.

    \b
    Examples:
      ecephys-dl links --all --with-lfp > urls.txt
      ecephys-dl links --genotype Sst --format aria2 > sst.aria2 && aria2c -i sst.aria2 -x 8
      ecephys-dl links 715093703 --with-lfp --format json
    """
    import csv
    import json

    from ecephys_dl.errors import UsageError
    from ecephys_dl.fetch import FetchRequest, resolve
    from ecephys_dl.http import RetryPolicy, make_client
    from ecephys_dl.layout import CacheLayout

    settings = _settings(ctx)
    chosen = selection_from({**selection, "ids": (*session_ids, *selection.get("ids", ()))})
    if chosen.is_empty and not all_sessions:
        raise UsageError("choose the sessions", hint="give session ids, filters such as --genotype Sst, or --all")
    request = FetchRequest(selection=chosen, all_sessions=all_sessions, with_lfp=with_lfp or lfp_only, lfp_only=lfp_only)
    policy = RetryPolicy(attempts=settings.retries + 1, backoff=settings.retry_wait)
    with open_catalog(settings) as catalog, make_client(read_timeout=settings.timeout, verify=settings.tls_verify) as client:
        catalog.ensure()
        targets, unavailable = resolve(settings, request, catalog, client, policy)
    from ecephys_dl.ui import note

    for session_id, probe_id in unavailable:
        note(f"LFP not available for probe {probe_id} of session {session_id}")
    cache = CacheLayout(settings.cache_dir)
    rows = [(cache.relative(t.final(cache)), t) for t in targets]
    if fmt == "urls":
        sys.stdout.writelines(f"{t.url}\n" for _, t in rows)
    elif fmt == "aria2":
        for relative, t in rows:
            # aria2's per-file dir overrides its -d, so it names the cache's directory in full.
            final = t.final(cache)
            sys.stdout.write(f"{t.url}\n  dir={final.parent.resolve()}\n  out={final.name}\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "url", "kind", "session_id", "probe_id", "size"])
        for relative, t in rows:
            writer.writerow([relative, t.url, str(t.kind), t.session_id, t.probe_id or "", "" if t.size is None else t.size])
    else:
        data = [{"path": r, "url": t.url, "kind": str(t.kind), "session_id": t.session_id, "probe_id": t.probe_id, "size": t.size} for r, t in rows]
        json.dump(data, sys.stdout, indent=1)
        sys.stdout.write("\n")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--all", "all_sessions", is_flag=True, help="Every session of the dataset, not only those in the cache.")
@click.option("--with-lfp", is_flag=True, default=None, help="Count each session's LFP files (default: where some are there).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format.")
@click.pass_context
def status(ctx: click.Context, all_sessions: bool, with_lfp: bool | None, fmt: str) -> None:
    """Show what the cache holds: per session, files verified, present, partial or missing.

    Also the bytes on disk and still to fetch, and when the last verify pass ran. Works offline.

    \b
    Examples:
      ecephys-dl status
      ecephys-dl status --all --with-lfp --format json
    """
    import json

    import pandas as pd

    from ecephys_dl.status import cache_status
    from ecephys_dl.ui import note

    settings = _settings(ctx)
    sessions = None
    if all_sessions:
        from ecephys_dl.layout import CacheLayout

        table = CacheLayout(settings.cache_dir).table("sessions")
        if not table.is_file():
            from ecephys_dl.errors import UsageError

            raise UsageError("the cache has no sessions table yet", hint="run `ecephys-dl sessions` once to fetch the metadata")
        sessions = [int(i) for i in pd.read_csv(table, usecols=["id"])["id"]]
    rows = cache_status(settings.cache_dir, sessions=sessions, with_lfp=with_lfp or None)
    last = _last_verify(settings.cache_dir)
    if fmt == "json":
        json.dump({"cache": str(settings.cache_dir), "sessions": [r.as_dict() for r in rows], "verify": last.to_json() if last else None}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    frame = pd.DataFrame(
        [{"session_id": r.session_id, "verified": r.count("verified"), "present": r.count("present"), "partial": r.count("partial"),
          "missing": r.count("missing"), "on_disk": _human(r.bytes_on_disk), "to_fetch": "?" if r.to_fetch is None else _human(r.to_fetch)}
         for r in rows]  # fmt: skip
    )
    if frame.empty:
        note(f"nothing fetched yet in {settings.cache_dir}")
    else:
        emit(frame.set_index("session_id"), fmt="table", columns=None, what="sessions")
    sys.stdout.write(f"last verify pass: {_describe_pass(last)}\n")


def _human(n: int) -> str:
    from ecephys_dl.sizes import format_size

    return format_size(n)


def _last_verify(cache_dir: Path) -> VerifyHistory | None:
    from ecephys_dl import verify

    return verify.last_pass(cache_dir)


def _describe_pass(last: VerifyHistory | None) -> str:
    if last is None:
        return "never"
    full = last.last_full_pass
    if full is None:
        return "none finished yet"
    problems = full.problems
    result = "all ok" if not problems else ", ".join(f"{v} {k}" for k, v in problems.items())
    return f"{full.finished_at} ({full.level}, {full.files} files: {result})"


SHELLS = ("bash", "zsh", "fish")


def completion_script(shell: str) -> str:
    """The completion script click generates for ``shell`` (what `completion` prints)."""
    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    if completion_class is None:
        raise click.BadParameter(f"no completion for {shell}")
    return completion_class(cli, {}, "ecephys-dl", "_ECEPHYS_DL_COMPLETE").source()


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    Completing a session id offers the ids of the cached session table.

    \b
    Examples:
      ecephys-dl completion bash > ~/.local/share/bash-completion/completions/ecephys-dl
      ecephys-dl completion zsh > "${fpath[1]}/_ecephys-dl"
      ecephys-dl completion fish > ~/.config/fish/completions/ecephys-dl.fish
    """
    sys.stdout.write(completion_script(shell))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--keep", "keep", type=click.Path(file_okay=False, path_type=Path), help="Work in this directory and keep it (default: a temporary one).")
def selftest(keep: Path | None) -> None:
    """Check this machine end to end against a built-in replica of the Allen services.

    Makes a small dataset, serves it on 127.0.0.1, then lists sessions, fetches two sessions
    with LFP, verifies them deeply, and kills a transfer with SIGKILL and resumes it. Prints
    pass or fail per step; exit 0 when all pass. Touches neither the real services nor your cache.

    \b
    Examples:
      ecephys-dl selftest
      ecephys-dl selftest --keep /tmp/ecephys-dl-selftest
    """
    from ecephys_dl.selftest import run_selftest

    def show(result: Any) -> None:
        mark = "pass" if result.ok else "FAIL"
        click.echo(f"{mark}  {result.name:<40} {result.seconds:6.1f} s  {result.detail}")

    results = run_selftest(workdir=keep, report=show)
    failed = [r for r in results if not r.ok]
    click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(ExitCode.FAILED)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--quick", "level", flag_value="quick", help="Sizes and HDF5 end-of-file only: O(1) per file, no h5py.")
@click.option("--deep", "level", flag_value="deep", help="Read every byte: SHA-256 against the records; h5py reads every chunk of unrecorded files.")
@click.option("--all", "all_sessions", is_flag=True, help="Also report every session file of the dataset that is missing.")
@click.option("--with-lfp", is_flag=True, help="With --all or ids: LFP files count as expected too.")
@click.argument("session_ids", nargs=-1, type=int, metavar="[SESSION_ID]...", shell_complete=complete_session_ids)
@click.option("--repair", is_flag=True, help="Fetch again what failed (resuming usable partials), then check again.")
@click.option("--clean", is_flag=True, help="Remove stray partials and leftovers not touched for 10 minutes.")
@click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, envvar="ECEPHYS_DL_JOBS", show_envvar=True, help="Files checked at once.")
@click.option("--time-limit", metavar="DURATION", help="Start no new file after this long; the next run at the same level continues the pass (e.g. 1h).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Report format.")
@click.option("-q", "--quiet", is_flag=True, help="Print only problems and the summary line.")
@click.option("--wait", is_flag=True, help="With --repair: wait for another run holding the cache's lock.")
@click.pass_context
def verify(ctx: click.Context, level: str | None, all_sessions: bool, with_lfp: bool, session_ids: Sequence[int], repair: bool, clean: bool,
           jobs: int, time_limit: str | None, fmt: str, quiet: bool, wait: bool) -> None:  # fmt: skip
    """Check that every file in the cache is whole and sound; with --repair, mend it.

    Checks the NWB files, the metadata CSVs and manifest.json. Exit 0 when everything checked
    is sound (also when --time-limit stopped the pass early), 1 when anything is not; stray
    partials are reported but do not fail. Without --repair nothing changes on disk except hashes
    recorded for files that had none (--deep) and what --clean removes.

    \b
    Examples:
      ecephys-dl verify
      ecephys-dl verify --quick
      ecephys-dl verify --deep --time-limit 2h     # nightly: continues where it stopped
      ecephys-dl verify --all --with-lfp --repair
      ecephys-dl verify --format json | jq '.results[] | select(.status != "ok")'
    """
    from contextlib import nullcontext

    from ecephys_dl.lock import RunLock
    from ecephys_dl.sizes import parse_duration
    from ecephys_dl.ui import note

    settings = _settings(ctx)
    limit = parse_duration(time_limit) if time_limit else None
    lock = RunLock(settings.cache_dir, "run", command="ecephys-dl verify --repair", wait=wait, notes=note) if (repair or clean) else nullcontext()
    with lock:
        code = _verify(settings, level or "standard", all_sessions, with_lfp, tuple(session_ids), repair, clean, jobs, limit, fmt, quiet)
    if code:
        sys.exit(code)


def _expected_files(settings: Settings, all_sessions: bool, with_lfp: bool, session_ids: tuple[int, ...]) -> list[Any]:
    """The files a selection says the cache should hold (sizes where recorded)."""
    from ecephys_dl.layout import CacheLayout
    from ecephys_dl.status import cache_status
    from ecephys_dl.verify import ExpectedFile

    if not (all_sessions or session_ids):
        return []
    cache = CacheLayout(settings.cache_dir)
    if all_sessions:
        import pandas as pd

        if not cache.table("sessions").is_file():
            from ecephys_dl.errors import UsageError

            raise UsageError("the cache has no sessions table", hint="run `ecephys-dl sessions` once to fetch the metadata")
        session_ids = tuple(int(i) for i in pd.read_csv(cache.table("sessions"), usecols=["id"])["id"])
    expected = []
    for status in cache_status(settings.cache_dir, sessions=list(session_ids), with_lfp=with_lfp):
        expected += [ExpectedFile(f.path, f.size) for f in status.files]
    return expected


def _verify(settings: Settings, level: str, all_sessions: bool, with_lfp: bool, session_ids: tuple[int, ...], repair: bool, clean: bool,
            jobs: int, limit: float | None, fmt: str, quiet: bool) -> int:  # fmt: skip
    import json

    from ecephys_dl.events import JsonEventLog
    from ecephys_dl.ui import render_verify, verify_progress
    from ecephys_dl.verify import Level, verify_cache

    expected = _expected_files(settings, all_sessions, with_lfp, session_ids)
    log = JsonEventLog(settings.log_file) if settings.log_file else None

    def check() -> Any:
        with verify_progress(0, enabled=None if not quiet else False) as progress:
            return verify_cache(settings.cache_dir, level=Level(level), jobs=jobs, expected=expected, clean=clean, time_limit=limit, progress=progress)

    report = check()
    repaired: dict[str, Any] = {}
    if repair and not report.ok:
        repaired = _repair(settings, report, quiet=quiet)
        report = check()
    if log:
        log.emit("verify", **report.summary.as_dict(), passed=report.ok, repaired=repaired or None)
        log.close()
    if fmt == "json":
        document = {"summary": report.summary.as_dict(), "passed": report.ok, "results": [r.as_dict() for r in report.results]}
        json.dump({**document, **({"repaired": repaired} if repair else {})}, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        render_verify(report, sys.stdout)
    return 0 if report.ok else int(ExitCode.FAILED)


def _repair(settings: Settings, report: Any, *, quiet: bool) -> dict[str, Any]:
    """Fetch again the NWB files that failed, refresh bad tables, restore a bad manifest (kept aside)."""
    from ecephys_dl.fetch import fetch_files, plan_repairs
    from ecephys_dl.http import RetryPolicy, make_client
    from ecephys_dl.layout import CacheLayout
    from ecephys_dl.manifest import repair_manifest
    from ecephys_dl.transfer import Shared, TransferSettings
    from ecephys_dl.ui import fetch_progress, note

    cache = CacheLayout(settings.cache_dir)
    bad = [r for r in report.results if str(r.status) not in ("ok", "stray-partial")]
    done: dict[str, Any] = {"fetched": [], "tables": [], "manifest": None, "failed": []}
    for result in bad:
        if result.kind == "manifest":
            aside = repair_manifest(cache)
            if aside is not None:
                note(f"kept the bad manifest as {aside.name}")
            done["manifest"] = "rewritten"
    policy = RetryPolicy(attempts=settings.retries + 1, backoff=settings.retry_wait)
    with open_catalog(settings) as catalog, make_client(read_timeout=settings.timeout, verify=settings.tls_verify) as client:
        for result in bad:
            name = result.path.rsplit("/", 1)[-1]
            if result.kind != "csv":
                continue
            try:
                if result.path in {f"{t}.csv" for t in ("sessions", "probes", "channels", "units")}:
                    catalog.ensure([name[: -len(".csv")]], refresh=True)
                elif result.path.startswith("session_"):
                    catalog.ensure_session_metrics(int(name.split("_")[1]), refresh=True)
                else:
                    catalog.ensure_metrics(name[: -len("_analysis_metrics.csv")], refresh=True)
                done["tables"].append(result.path)
            except (EcephysDlError, ValueError) as error:
                done["failed"].append({"path": result.path, "error": str(error)})
        nwb = [r.path for r in bad if r.kind in ("session-nwb", "lfp-nwb")]
        if nwb:
            catalog.ensure()
            planned = plan_repairs(settings, nwb, catalog, client, policy)
            shared = Shared(client, max_connections=16, allowed_hosts=settings.allowed_hosts)
            with fetch_progress(sum(p.remaining or 0 for p in planned), quiet=quiet) as listener:
                summary = fetch_files(planned, cache, shared=shared, settings=TransferSettings(policy=policy), listener=listener)
            done["fetched"] = [o.relative for o in summary.outcomes if o.status == "fetched"]
            done["failed"] += [{"path": o.relative, "error": o.message} for o in summary.outcomes if o.status != "fetched"]
    return done


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

"""Options shared by several commands, and the values they build (selections, filters, fetch options)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ecephys_dl.config import ENV, default_cache_dir
from ecephys_dl.layout import SESSION_TYPES

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from ecephys_dl.fetch import FetchOptions
    from ecephys_dl.select import SessionSelection
    from ecephys_dl.views import UnitFilter

__all__ = [
    "complete_session_ids",
    "fetch_options_from",
    "file_selection_options",
    "id_filter_options",
    "output_options",
    "quality_options",
    "repair_transfer_options",
    "selection_from",
    "selection_options",
    "transfer_options",
    "unit_filter_from",
]

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "csv", "tsv", "json", "ids")


def _stack(func: F, options: Sequence[Callable[[F], F]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def complete_session_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """TAB completion of session ids from the cached session table (no network, no pandas)."""
    import csv

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
    return _stack(func, [
        click.option("--id", "ids", type=int, multiple=True, metavar="ID", shell_complete=complete_session_ids, help="Only this session id (repeatable)."),
        click.option("--genotype", metavar="TEXT", help="Genotype contains TEXT (case-insensitive), e.g. Sst, Vip, Pvalb, wt."),
        click.option("--sex", type=click.Choice(["M", "F"], case_sensitive=False), help="Donor sex."),
        click.option("--session-type", type=click.Choice(SESSION_TYPES), help="Stimulus set shown in the session."),
        click.option("--structure", "structures", multiple=True, metavar="ACRONYM", help="Sessions that recorded this structure (repeatable: all of them)."),
    ])  # fmt: skip


def file_selection_options(func: F) -> F:
    """Session ids, the session filters, --all and which files of them: shared by fetch and links."""
    return _stack(func, [
        click.argument("session_ids", nargs=-1, type=int, metavar="[SESSION_ID]...", shell_complete=complete_session_ids),
        selection_options,
        click.option("--all", "all_sessions", is_flag=True, help="Every session of the dataset."),
        click.option("--with-lfp", is_flag=True, help="Also each selected session's probe LFP files."),
        click.option("--lfp-only", is_flag=True, help="Only the probe LFP files, not the session files."),
    ])  # fmt: skip


def selection_from(kwargs: Mapping[str, Any], *extra_ids: int) -> SessionSelection:
    """The :class:`SessionSelection` the selection options describe (``extra_ids``: ids given as arguments)."""
    from ecephys_dl.select import SessionSelection

    sex = kwargs.get("sex")
    return SessionSelection(
        ids=(*extra_ids, *(kwargs.get("ids") or ())),
        genotype=kwargs.get("genotype"),
        sex=sex.upper() if sex else None,
        session_type=kwargs.get("session_type"),
        structures=tuple(kwargs.get("structures") or ()),
    )


def output_options(func: F) -> F:
    """--format, --columns and --refresh of the table commands."""
    return _stack(func, [
        click.option("--format", "fmt", type=click.Choice(FORMATS), help="Output format.  [default: table on a terminal, csv otherwise]"),
        click.option("--columns", metavar="A,B,...", help="Only these columns, in this order."),
        click.option("--refresh", is_flag=True, help="Fetch the metadata tables again even if they are cached."),
    ])  # fmt: skip


def quality_options(func: F) -> F:
    """AllenSDK's default unit quality filters, each adjustable."""
    return _stack(func, [
        click.option("--amplitude-cutoff-max", type=float, default=0.1, show_default=True, help="Keep units with amplitude_cutoff <= this."),
        click.option("--presence-ratio-min", type=float, default=0.95, show_default=True, help="Keep units with presence_ratio >= this."),
        click.option("--isi-violations-max", type=float, default=0.5, show_default=True, help="Keep units with isi_violations <= this."),
        click.option("--no-quality-filter", is_flag=True, help="Keep every unit (no thresholds, noise units too)."),
    ])  # fmt: skip


def unit_filter_from(kwargs: Mapping[str, Any]) -> UnitFilter:
    """The :class:`UnitFilter` the quality options describe."""
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
    return _stack(func, [
        click.option("--session", "sessions", type=int, multiple=True, metavar="ID", help="Only this session (repeatable)."),
        click.option("--probe", "probes", type=int, multiple=True, metavar="ID", help="Only this probe (repeatable)."),
        click.option("--structure", "structures", multiple=True, metavar="ACRONYM", help="Only this structure (repeatable)."),
    ])  # fmt: skip


def _transfer_option_list(*, jobs: bool) -> list[Callable[[F], F]]:
    options: list[Callable[[F], F]] = [
        click.option("--connections", type=click.IntRange(1, 64), default=4, show_default=True, envvar="ECEPHYS_DL_CONNECTIONS", show_envvar=True, help="Ranged connections per file, over all its sources."),
        click.option("--source-connections", type=click.IntRange(1, 256), envvar="ECEPHYS_DL_SOURCE_CONNECTIONS", show_envvar=True,
                     help="Open connections to any one source at most, across files (e.g. a mirror's per-client limit).  [default: only --max-connections]"),
        click.option("--max-connections", type=click.IntRange(1, 256), default=16, show_default=True, envvar="ECEPHYS_DL_MAX_CONNECTIONS", show_envvar=True, help="Open connections in all, across files."),
        click.option("--stall-timeout", type=click.FloatRange(0.1, 86400), default=60.0, show_default=True, envvar="ECEPHYS_DL_STALL_TIMEOUT", show_envvar=True, help="Seconds without a byte before a connection is dropped and its range resumed."),
        click.option("--min-speed", metavar="SIZE", default="0", show_default=True, envvar="ECEPHYS_DL_MIN_SPEED", show_envvar=True, help="Bytes/s under which a connection (over a minute) is dropped and resumed; 0 = off."),
        click.option("--limit-rate", metavar="SIZE", default=None, envvar="ECEPHYS_DL_LIMIT_RATE", show_envvar=True, help="Cap on the total bandwidth, e.g. 20M (bytes/s)."),
        click.option("--accept-unpublished", is_flag=True, envvar="ECEPHYS_DL_ACCEPT_UNPUBLISHED", show_envvar=True,
                     help="Keep a file whose size or SHA-256 is not the published one (a re-release upstream), recorded as such; verify reports it as differs-from-published."),
        click.option("--reserve", metavar="SIZE", default="1G", show_default=True, envvar="ECEPHYS_DL_RESERVE", show_envvar=True, help="Disk space to leave free."),
    ]  # fmt: skip
    if jobs:
        options.insert(1, click.option("--jobs", type=click.IntRange(1, 64), default=4, show_default=True, envvar="ECEPHYS_DL_JOBS", show_envvar=True, help="Files fetched at once."))
    return options


def transfer_options(func: F) -> F:
    """How files are transferred; each option has an environment variable."""
    return _stack(func, _transfer_option_list(jobs=True))


def repair_transfer_options(func: F) -> F:
    """The transfer options of ``verify --repair`` (its --jobs is verify's own)."""
    return _stack(func, _transfer_option_list(jobs=False))


def _size(text: str, name: str) -> int:
    from ecephys_dl.errors import UsageError
    from ecephys_dl.sizes import parse_size

    try:
        return parse_size(text)
    except UsageError as error:
        raise UsageError(f"{name}: {error.message}", hint=error.hint) from None


def fetch_options_from(kwargs: Mapping[str, Any], *, shard: str | None = None, max_duration: str | None = None, wait: bool = False) -> FetchOptions:
    """The :class:`~ecephys_dl.fetch.FetchOptions` the transfer options (and fetch's own) describe."""
    from ecephys_dl.fetch import FetchOptions
    from ecephys_dl.shards import parse_shard
    from ecephys_dl.sizes import parse_duration

    return FetchOptions(
        connections=kwargs["connections"],
        jobs=kwargs.get("jobs", FetchOptions.jobs),
        max_connections=kwargs["max_connections"],
        source_connections=kwargs.get("source_connections"),
        stall_timeout=kwargs["stall_timeout"],
        min_speed=_size(kwargs["min_speed"], "--min-speed"),
        limit_rate=_size(kwargs["limit_rate"], "--limit-rate") if kwargs["limit_rate"] else None,
        reserve=_size(kwargs["reserve"], "--reserve"),
        shard=parse_shard(shard) if shard else None,
        max_duration=parse_duration(max_duration) if max_duration else None,
        wait=wait,
        accept_unpublished=kwargs["accept_unpublished"],
    )

"""The commands that fetch: ``fetch`` itself, and ``links`` for other download tools."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from ecephys_dl.cli.app import CONTEXT_SETTINGS, cli, settings_of
from ecephys_dl.cli.options import fetch_options_from, file_selection_options, selection_from, transfer_options
from ecephys_dl.errors import ExitCode, TransferCancelled, UsageError

if TYPE_CHECKING:
    from ecephys_dl.config import Settings
    from ecephys_dl.fetch import FetchOptions, Prepared, RunReport
    from ecephys_dl.select import FetchRequest

__all__ = ["fetch", "links"]


def _request(session_ids: Sequence[int], all_sessions: bool, with_lfp: bool, lfp_only: bool, probe_ids: Sequence[int], selection: dict[str, Any]) -> FetchRequest:
    from ecephys_dl.select import FetchRequest

    chosen = selection_from(selection, *session_ids)
    if chosen.is_empty and not all_sessions:
        raise UsageError("choose the sessions to fetch", hint="give session ids, filters such as --genotype Sst, or --all")
    return FetchRequest(selection=chosen, all_sessions=all_sessions, with_lfp=with_lfp or lfp_only or bool(probe_ids), lfp_only=lfp_only, probe_ids=tuple(probe_ids))


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
def fetch(ctx: click.Context, /, session_ids: Sequence[int], all_sessions: bool, with_lfp: bool, lfp_only: bool,
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
    from ecephys_dl import fetch as runner

    settings = settings_of(ctx)
    request = _request(session_ids, all_sessions, with_lfp, lfp_only, probe_ids, options)
    fetch_options = fetch_options_from(options, shard=shard, max_duration=max_duration, wait=wait)
    if dry_run:
        from ecephys_dl.progress import rma_progress

        with rma_progress() as progress:
            prepared = runner.prepare(settings, request, fetch_options, progress=progress)
        _show_plan(prepared, fmt or "table")
        return
    report, received = _run(settings, request, fetch_options, quiet=quiet)
    _show_report(report, fmt or "table")
    if received:
        sys.exit(ExitCode.TERMINATED if received[0] == signal.SIGTERM else ExitCode.INTERRUPTED)
    if not report.ok:
        sys.exit(ExitCode.FAILED)


def _run(settings: Settings, request: FetchRequest, options: FetchOptions, *, quiet: bool) -> tuple[RunReport, list[int]]:
    """Run the fetch with SIGINT and SIGTERM turned into a clean stop; the report and the signals received."""
    from ecephys_dl import fetch as runner
    from ecephys_dl.progress import fetch_progress

    stop = threading.Event()
    received: list[int] = []
    with fetch_progress(quiet=quiet, verbose=settings.verbose) as listener:

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            received.append(signum)
            stop.set()
            if not listener.began.is_set():
                # Before any transfer there is nothing to stop cleanly: leave now (the lock is released on the way out).
                raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(ExitCode.TERMINATED)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            report = runner.run(settings, request, options, listener, stop)
        except TransferCancelled:
            if not received:
                raise
            sys.exit(ExitCode.TERMINATED if received[0] == signal.SIGTERM else ExitCode.INTERRUPTED)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return report, received


def _show_plan(prepared: Prepared, fmt: str) -> None:
    from ecephys_dl.ui import note, render_plan

    for session_id, probe_id in prepared.unavailable:
        note(f"LFP not available for probe {probe_id} of session {session_id} (not a failure)")
    if fmt == "json":
        json.dump(prepared.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        render_plan(prepared, sys.stdout)


def _show_report(report: RunReport, fmt: str) -> None:
    from ecephys_dl.ui import render_summary

    if fmt == "json":
        json.dump(report.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    render_summary(report.summary, sys.stdout)
    if report.stopped_by_max_duration:
        sys.stdout.write("stopped by --max-duration: run again to continue\n")


@cli.command(context_settings=CONTEXT_SETTINGS)
@file_selection_options
@click.option("--format", "fmt", type=click.Choice(["urls", "aria2", "csv", "json"]), default="urls", show_default=True, help="Output format.")
@click.pass_context
def links(ctx: click.Context, /, session_ids: Sequence[int], all_sessions: bool, with_lfp: bool, lfp_only: bool, fmt: str, **selection: Any) -> None:
    """Print the download URLs of a selection, for other download tools.

    Each file comes with every URL it can be read from: the source's own first, then the S3
    mirror's and the DANDI archive's, which take no query (the warehouse's link only with
    --source warehouse, the default). `urls` prints the source's URL of each file. The csv and
    json forms add `sha256`, the file's published SHA-256 (empty where the published table has
    no such file), and `urls`, all its URLs (space-separated in csv). The aria2 form gives each
    file all its URLs on one line (aria2c fetches from several sources), its place in the cache
    (absolute directories, so `aria2c -i` fills the tree AllenSDK and `verify` accept), and its
    published digest (`checksum=sha-256=...`), which aria2c checks.

    \b
    Examples:
      ecephys-dl links --all --with-lfp > urls.txt
      ecephys-dl links --genotype Sst --format aria2 > sst.aria2 && aria2c -i sst.aria2 -x 8
      ecephys-dl --source s3 links --all --with-lfp --format aria2 > all.aria2
      ecephys-dl links 715093703 --with-lfp --format json
      ecephys-dl links 715093703 --with-lfp --format json | jq -r '.[] | select(.sha256) | "\\(.sha256)  \\(.path)"' > SHA256SUMS
    """
    from ecephys_dl.fetch import resolve_links
    from ecephys_dl.links import LinkFormat, render
    from ecephys_dl.progress import rma_progress
    from ecephys_dl.select import FetchRequest
    from ecephys_dl.ui import note

    settings = settings_of(ctx)
    chosen = selection_from(selection, *session_ids)
    if chosen.is_empty and not all_sessions:
        raise UsageError("choose the sessions", hint="give session ids, filters such as --genotype Sst, or --all")
    request = FetchRequest(selection=chosen, all_sessions=all_sessions, with_lfp=with_lfp or lfp_only, lfp_only=lfp_only)
    with rma_progress() as progress:
        found = resolve_links(settings, request, progress=progress)
    for session_id, probe_id in found.unavailable:
        note(f"LFP not available for probe {probe_id} of session {session_id}")
    sys.stdout.write(render(found.links, LinkFormat(fmt), root=settings.layout.root))

"""The commands that look at what a cache holds: ``status`` and ``verify`` (with ``--repair``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import click

from ecephys_dl.cli.app import CONTEXT_SETTINGS, cli, settings_of
from ecephys_dl.cli.options import complete_session_ids, fetch_options_from, repair_transfer_options
from ecephys_dl.cli.tables import emit
from ecephys_dl.config import Settings
from ecephys_dl.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from ecephys_dl.fetch import FetchOptions
    from ecephys_dl.verify import ExpectedFile, VerifyHistory

__all__ = ["status", "verify"]


def _all_session_ids(settings: Settings) -> list[int]:
    """Every session id of the cached sessions table (a usage error when there is none yet)."""
    import pandas as pd

    table = settings.layout.table("sessions")
    if not table.is_file():
        raise UsageError("the cache has no sessions table yet", hint="run `ecephys-dl sessions` once to fetch the metadata")
    return [int(i) for i in pd.read_csv(table, usecols=["id"])["id"]]


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--all", "all_sessions", is_flag=True, help="Every session of the dataset, not only those in the cache.")
@click.option("--with-lfp", is_flag=True, default=None, help="Count each session's LFP files (default: where some are there).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format.")
@click.pass_context
def status(ctx: click.Context, /, all_sessions: bool, with_lfp: bool | None, fmt: str) -> None:
    """Show what the cache holds: per session, files verified, present, partial or missing.

    Also how many are proven equal to the published bytes (their recorded SHA-256 is the
    archive's), the bytes on disk and still to fetch, and when the last verify pass ran. Works offline.

    \b
    Examples:
      ecephys-dl status
      ecephys-dl status --all --with-lfp --format json
    """
    import pandas as pd

    from ecephys_dl.sizes import format_size
    from ecephys_dl.status import Proof, cache_status
    from ecephys_dl.ui import note
    from ecephys_dl.verify import last_pass

    settings = settings_of(ctx)
    sessions = _all_session_ids(settings) if all_sessions else None
    published = settings.published()
    rows = cache_status(settings.cache_dir, sessions=sessions, with_lfp=with_lfp or None, published=published)
    last = last_pass(settings.cache_dir)
    if fmt == "json":
        document = {"cache": str(settings.cache_dir), "published_table": published.source, "published_equal": sum(r.proven() for r in rows),
                    "sessions": [r.as_dict() for r in rows], "verify": last.to_json() if last else None}  # fmt: skip
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    frame = pd.DataFrame(
        [{"session_id": r.session_id, "verified": r.count("verified"), "present": r.count("present"), "partial": r.count("partial"),
          "missing": r.count("missing"), "published": r.proven(), "on_disk": format_size(r.bytes_on_disk), "to_fetch": "?" if r.to_fetch is None else format_size(r.to_fetch)}
         for r in rows]  # fmt: skip
    )
    if frame.empty:
        note(f"nothing fetched yet in {settings.cache_dir}")
    else:
        emit(frame.set_index("session_id"), fmt="table", columns=None, what="sessions")
    in_place = sum(1 for r in rows for f in r.files if f.size is not None and str(f.state) in ("verified", "present"))
    differs = sum(r.proven(Proof.DIFFERS) for r in rows)
    sys.stdout.write(f"proven equal to the published bytes: {sum(r.proven() for r in rows)} of {in_place} files in place"
                     + (f"; {differs} differ from them" if differs else "") + f" (table: {published.source})\n")  # fmt: skip
    sys.stdout.write(f"last verify pass: {_describe_pass(last)}\n")


def _describe_pass(last: VerifyHistory | None) -> str:
    if last is None:
        return "never"
    full = last.last_full_pass
    if full is None:
        return "none finished yet"
    problems = full.problems
    result = "all ok" if not problems else ", ".join(f"{v} {k}" for k, v in problems.items())
    return f"{full.finished_at} ({full.level}, {full.files} files: {result})"


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--quick", "level", flag_value="quick", help="Sizes (the published ones where there is no record) and HDF5 end-of-file only: O(1) per file, no h5py.")
@click.option("--deep", "level", flag_value="deep", help="Read every byte: SHA-256 against the records and the published digests; h5py reads every chunk of files with neither.")
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
@click.option("--refresh-published", is_flag=True, help="First fetch the current published sizes and SHA-256s from the DANDI API (as `published --refresh`).")
@repair_transfer_options
@click.pass_context
def verify(ctx: click.Context, /, level: str | None, all_sessions: bool, with_lfp: bool, session_ids: Sequence[int], repair: bool, clean: bool,
           jobs: int, time_limit: str | None, fmt: str, quiet: bool, wait: bool, refresh_published: bool, **transfer: Any) -> None:  # fmt: skip
    """Check that every file in the cache is whole and sound; with --repair, mend it.

    Checks the NWB files, the metadata CSVs and manifest.json. Exit 0 when everything checked
    is sound (also when --time-limit stopped the pass early), 1 when anything is not; stray
    partials are reported but do not fail. Without --repair nothing changes on disk except hashes
    recorded for files that had none (--deep) and what --clean removes. --repair fetches with the
    transfer options below, as `fetch` does.

    \b
    Examples:
      ecephys-dl verify
      ecephys-dl verify --quick
      ecephys-dl verify --deep --time-limit 2h     # nightly: continues where it stopped
      ecephys-dl verify --all --with-lfp --repair
      ecephys-dl verify --format json | jq '.results[] | select(.status != "ok")'
      ecephys-dl verify --deep --refresh-published   # against the archive's digests of today
    """
    from ecephys_dl.lock import RunLock
    from ecephys_dl.sizes import parse_duration
    from ecephys_dl.ui import note

    settings = settings_of(ctx)
    limit = parse_duration(time_limit) if time_limit else None
    options = fetch_options_from(transfer, wait=wait)
    if refresh_published:
        from ecephys_dl.cli.truth import refresh_and_tell

        refresh_and_tell(settings, quiet=quiet)
    lock = RunLock(settings.cache_dir, "run", command="ecephys-dl verify --repair", wait=wait, notes=note) if (repair or clean) else nullcontext()
    with lock:
        code = _verify(settings, level or "standard", all_sessions, with_lfp, tuple(session_ids), repair, clean, jobs, limit, fmt, quiet, options)
    if code:
        sys.exit(code)


def _expected_files(settings: Settings, all_sessions: bool, with_lfp: bool, session_ids: tuple[int, ...]) -> list[ExpectedFile]:
    """The files a selection says the cache should hold (sizes where recorded)."""
    from ecephys_dl.status import cache_status
    from ecephys_dl.verify import ExpectedFile

    if not (all_sessions or session_ids):
        return []
    if all_sessions:
        session_ids = tuple(_all_session_ids(settings))
    expected = []
    for status in cache_status(settings.cache_dir, sessions=list(session_ids), with_lfp=with_lfp):
        expected += [ExpectedFile(f.path, f.size) for f in status.files]
    return expected


def _verify(settings: Settings, level: str, all_sessions: bool, with_lfp: bool, session_ids: tuple[int, ...], repair: bool, clean: bool,
            jobs: int, limit: float | None, fmt: str, quiet: bool, options: FetchOptions) -> int:  # fmt: skip
    from ecephys_dl.events import JsonEventLog
    from ecephys_dl.progress import fetch_progress, verify_progress
    from ecephys_dl.ui import render_verify
    from ecephys_dl.verify import Level, VerifyReport, verify_cache

    expected = _expected_files(settings, all_sessions, with_lfp, session_ids)
    log = JsonEventLog(settings.log_file) if settings.log_file else None

    def check() -> VerifyReport:
        with verify_progress(0, enabled=None if not quiet else False) as progress:
            return verify_cache(settings.cache_dir, level=Level(level), jobs=jobs, expected=expected, clean=clean, time_limit=limit, progress=progress,
                                published=settings.published())  # fmt: skip

    report = check()
    repaired: dict[str, object] = {}
    if repair and not report.ok:
        from ecephys_dl.fetch import repair as mend

        bad = [r for r in report.results if str(r.status) not in ("ok", "stray-partial")]
        with fetch_progress(quiet=quiet, verbose=settings.verbose) as listener:
            repaired = mend(settings, bad, options, listener).to_json()
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

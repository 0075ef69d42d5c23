"""The ``published`` command: the table of published sizes and SHA-256s a cache is held to."""

from __future__ import annotations

import json
import sys
from collections import Counter

import click

from ecephys_dl.cli.app import CONTEXT_SETTINGS, cli, settings_of
from ecephys_dl.config import Settings

__all__ = ["published", "refresh_and_tell"]


def refresh_and_tell(settings: Settings, *, quiet: bool = False) -> dict[str, object]:
    """Refresh the cache's published table from DANDI, note what changed on stderr, and return the report's JSON."""
    from ecephys_dl.refresh import refresh_published
    from ecephys_dl.sizes import format_size
    from ecephys_dl.ui import note

    report = refresh_published(settings)
    if not quiet:
        changes = report.changes
        said = ("no change" if changes.none else
                f"{len(changes.added)} added, {len(changes.removed)} gone, {len(changes.changed)} published with other bytes")  # fmt: skip
        note(f"published table refreshed from {settings.dandi_url}: {report.files} files, {format_size(report.total_bytes)} "
             f"(dandisets {', '.join(report.dandisets)}) in {report.path}; against {report.before}: {said}")  # fmt: skip
        for path in changes.changed:
            note(f"  re-released: {path}")
    return report.to_json()


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--refresh", is_flag=True, help="Fetch the current sizes and SHA-256s from the DANDI API (--dandi-url) into the cache's state directory first.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="table: a summary; json: the summary and every file; csv: the table itself.")  # fmt: skip
@click.pass_context
def published(ctx: click.Context, /, refresh: bool, fmt: str) -> None:
    """Show the published sizes and SHA-256s the cache is held to; with --refresh, update them from DANDI.

    The table used is --published-table if given, else the cache's refreshed copy
    (.ecephys-dl/published_files.csv), else the one shipped with ecephys-dl (offline, all 383
    files of the release). verify --deep proves each file equal to it; fetch renames a file into
    place only when its SHA-256 is the published one.

    \b
    Examples:
      ecephys-dl published
      ecephys-dl published --refresh
      ecephys-dl published --format csv > published_files.csv
      ecephys-dl --dandi-url http://127.0.0.1:8001/api published --refresh --format json
    """
    from ecephys_dl.published import published_csv
    from ecephys_dl.sizes import format_size

    settings = settings_of(ctx)
    refreshed = refresh_and_tell(settings, quiet=fmt == "json") if refresh else None
    table = settings.published()
    if fmt == "csv":
        sys.stdout.buffer.write(published_csv(table))
        return
    kinds = Counter(str(f.kind) for f in table)
    dandisets = Counter(f.dandiset for f in table)
    total = sum(f.size for f in table)
    if fmt == "json":
        files = [{"path": f.cache_path, "kind": str(f.kind), "size": f.size, "sha256": f.sha256, "dandiset": f.dandiset,
                  "dandi_asset_id": f.dandi_asset_id, "dandi_path": f.dandi_path} for f in table]  # fmt: skip
        document = {"table": table.source, "files": len(table), "total_bytes": total, "kinds": dict(kinds), "dandisets": dict(dandisets),
                    "refreshed": refreshed, "published": files}  # fmt: skip
        json.dump(document, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    sys.stdout.write(f"table: {table.source}\n")
    sys.stdout.write(f"files: {len(table)} ({kinds.get('session', 0)} session, {kinds.get('lfp', 0)} lfp), {format_size(total)} ({total} bytes)\n")
    for dandiset, count in sorted(dandisets.items()):
        sys.stdout.write(f"dandiset {dandiset}: {count} files\n")

"""What people read: tables on a terminal, plain formats for scripts, plans, summaries and reports.

With :mod:`ecephys_dl.progress` the only modules that import rich. Results go to stdout; notes go
to stderr.
"""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ecephys_dl.delivery import FetchSummary
    from ecephys_dl.fetch import Prepared
    from ecephys_dl.verify import VerifyReport, VerifySummary

__all__ = ["OutputFormat", "note", "pick_columns", "render_frame", "render_plan", "render_summary", "render_verify", "verify_summary_line"]


class OutputFormat(enum.StrEnum):
    """``--format`` of the table commands."""

    TABLE = "table"
    CSV = "csv"
    TSV = "tsv"
    JSON = "json"
    IDS = "ids"


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """A JSON-ready Python value: numpy scalars unwrapped, NaN as null, arrays as lists."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if _is_missing(value):
        return None
    return value


def _cell(value: Any) -> str:
    """One value as text for csv/tsv/table: lists joined with ';', NaN as 'nan' inside lists, empty alone."""
    value = _plain(value)
    if isinstance(value, list):
        return ";".join("nan" if v is None else str(v) for v in value)
    if value is None:
        return ""
    return str(value)


def _listy(frame: pd.DataFrame) -> list[str]:
    """Columns holding lists (e.g. ecephys_structure_acronyms)."""
    return [
        c
        for c in frame.columns
        if frame[c].dtype == object and any(isinstance(v, (list, tuple)) or type(v).__name__ == "ndarray" for v in frame[c].head(50))
    ]


def render_frame(frame: pd.DataFrame, fmt: OutputFormat, out: IO[str], *, title: str | None = None, width: int | None = None) -> None:
    """Write ``frame`` (index included) to ``out`` in the chosen format."""
    index_name = str(frame.index.name or "id")
    if fmt is OutputFormat.IDS:
        out.writelines(f"{i}\n" for i in frame.index)
        return
    if fmt is OutputFormat.JSON:
        rows = [{index_name: _plain(i), **{str(k): _plain(v) for k, v in zip(frame.columns, row, strict=True)}} for i, row in zip(frame.index, frame.itertuples(index=False, name=None), strict=True)]
        json.dump(rows, out, indent=1, allow_nan=False)
        out.write("\n")
        return
    if fmt in (OutputFormat.CSV, OutputFormat.TSV):
        text = frame.copy()
        for column in _listy(text):
            text[column] = [_cell(v) for v in text[column]]
        text.to_csv(out, sep="," if fmt is OutputFormat.CSV else "\t", index_label=index_name)
        return
    _render_rich(frame, out, title=title, width=width)


def _render_rich(frame: pd.DataFrame, out: IO[str], *, title: str | None, width: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=width, soft_wrap=False)
    index_name = str(frame.index.name or "id")
    columns = [index_name, *map(str, frame.columns)]
    # A table wider than the terminal keeps the leading columns that fit and says what it left out.
    budget = console.width
    shown: list[str] = []
    used = 0
    for column in columns:
        sample = [column, *(_cell(v) for v in (frame.index if column == index_name else frame[column]).tolist()[:50])]
        need = min(max(len(s) for s in sample), 40) + 3
        if shown and used + need > budget:
            break
        shown.append(column)
        used += need
    table = Table(title=title, show_lines=False, header_style="bold", pad_edge=False)
    for column in shown:
        table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=40)
    for index, row in zip(frame.index, frame.itertuples(index=False, name=None), strict=True):
        values = dict(zip(map(str, frame.columns), row, strict=True))
        table.add_row(*(_cell(index) if c == index_name else _cell(values[c]) for c in shown))
    console.print(table)
    hidden = len(columns) - len(shown)
    if hidden:
        console.print(f"[dim]{len(frame)} rows; {hidden} more columns not shown (--columns to choose, --format csv for all)[/dim]")


def note(message: str, *, stream: IO[str] | None = None) -> None:
    """A diagnostic line on stderr."""
    (stream or sys.stderr).write(message.rstrip("\n") + "\n")


def pick_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Keep the named columns, in that order; the index always stays."""
    unknown = [c for c in columns if c not in frame.columns]
    if unknown:
        from ecephys_dl.errors import UsageError

        raise UsageError(f"unknown column(s): {', '.join(unknown)}", hint=f"choose from: {', '.join(map(str, frame.columns))}")
    return frame.loc[:, list(columns)]


def render_plan(prepared: Prepared, out: IO[str]) -> None:
    """The fetch plan as a table: each file, what will happen to it, and the totals."""
    from rich.console import Console
    from rich.table import Table

    from ecephys_dl.sizes import format_size

    console = Console(file=out, soft_wrap=False)
    table = Table(title="fetch plan", header_style="bold", pad_edge=False)
    for column in ("file", "action", "size", "have", "reason"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for p in prepared.planned:
        size = format_size(p.target.size) if p.target.size is not None else "?"
        table.add_row(p.relative, str(p.action), size, format_size(p.have), p.reason)
    console.print(table)
    already = sum(p.have for p in prepared.planned)
    console.print(
        f"{len(prepared.planned)} files, {format_size(prepared.total)} in all; {format_size(already)} already there, "
        f"{format_size(prepared.to_fetch)} to fetch",
        highlight=False,
    )


def render_summary(summary: FetchSummary, out: IO[str]) -> None:
    """The end-of-run summary: counts, bytes, time, mean speed, and each failure."""
    from ecephys_dl.delivery import FileStatus
    from ecephys_dl.sizes import format_size

    speed = summary.bytes_fetched / summary.seconds if summary.seconds > 0 else 0.0
    out.write(
        f"fetched {summary.count(FileStatus.FETCHED)}, skipped {summary.count(FileStatus.SKIPPED)}, failed {summary.count(FileStatus.FAILED)}"
        f"{', cancelled' if summary.cancelled else ''}; {format_size(summary.bytes_fetched)} in {summary.seconds:.1f} s"
        f" ({format_size(speed)}/s)\n"
    )
    for source in summary.sources:
        dropped = f"; dropped: {source.dropped}" if source.dropped else ""
        failures = f", {source.errors} errors" if source.errors else ""
        failures += f", {source.stalls} stalls" if source.stalls else ""
        out.write(f"  from {source.source}: {format_size(source.bytes)} at {format_size(source.mean_speed)}/s{failures}{dropped}\n")
    for outcome in summary.outcomes:
        if outcome.status == "failed":
            out.write(f"  failed {outcome.relative}: {outcome.message}\n" + (f"    hint: {outcome.hint}\n" if outcome.hint else ""))


def render_verify(report: VerifyReport, out: IO[str]) -> None:
    """A verify report: one line per file that is not ok (stray partials too), then the summary line."""
    from rich.console import Console
    from rich.table import Table

    # Piped into a log or a cron mail, lines are kept whole rather than folded at 80 columns.
    console = Console(file=out, soft_wrap=False, highlight=False, width=None if out.isatty() else 200)
    shown = [r for r in report.results if str(r.status) != "ok"]
    if shown:
        table = Table(header_style="bold", pad_edge=False)
        table.add_column("file", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("detail", overflow="fold")
        for result in shown:
            style = "red" if result.status.fails else "yellow"
            table.add_row(result.path, f"[{style}]{result.status}[/{style}]", result.detail)
        console.print(table)
    console.print(verify_summary_line(report.summary), markup=False)


def verify_summary_line(summary: VerifySummary) -> str:
    """The one-line summary of a verify pass: files, bytes, ok, problems by kind, time, what is left."""
    from ecephys_dl.sizes import format_size

    problems = "".join(f", {count} {status}" for status, count in summary.problems.items())
    against = ""
    if summary.published_ok:
        proven = "equal to the published bytes" if str(summary.level) == "deep" else "of the published size"
        against = f" ({summary.published_ok} {proven})"
    line = (f"{summary.level} check of {summary.files} files ({format_size(summary.bytes)}): {summary.ok} ok{against}{problems}"
            f" in {summary.seconds:.1f} s")  # fmt: skip
    if summary.carried:
        line += f"; {summary.carried} of them checked earlier in this pass"
    if not summary.complete:
        line += f"; stopped by the time limit: {summary.remaining} files left (the next run at this level continues)"
    return line

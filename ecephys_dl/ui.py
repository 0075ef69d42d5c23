"""What people see: tables and progress on a terminal, plain formats for scripts.

The only module that imports rich. Results go to stdout; progress and notes go to stderr, and
only when stderr is a terminal.
"""

from __future__ import annotations

import enum
import json
import math
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ecephys_dl.http import RetryNotice

__all__ = ["FetchBars", "FetchLog", "OutputFormat", "RmaProgressBar", "fetch_progress", "render_frame", "rma_progress"]


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
    index_name = frame.index.name or "id"
    if fmt is OutputFormat.IDS:
        out.writelines(f"{i}\n" for i in frame.index)
        return
    if fmt is OutputFormat.JSON:
        rows = [{index_name: _plain(i), **{str(k): _plain(v) for k, v in zip(frame.columns, row)}} for i, row in zip(frame.index, frame.itertuples(index=False, name=None))]
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
    index_name = frame.index.name or "id"
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
    for index, row in zip(frame.index, frame.itertuples(index=False, name=None)):
        values = dict(zip(map(str, frame.columns), row))
        table.add_row(*(_cell(index) if c == index_name else _cell(values[c]) for c in shown))
    console.print(table)
    hidden = len(columns) - len(shown)
    if hidden:
        console.print(f"[dim]{len(frame)} rows; {hidden} more columns not shown (--columns to choose, --format csv for all)[/dim]")


class RmaProgressBar:
    """Pages and rows of RMA queries, as a rich progress bar on stderr."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def rows(self, name: str, done: int, total: int) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(f"{name}", total=total)
        self._progress.update(self._tasks[name], completed=done, total=total)

    def retry(self, name: str, notice: RetryNotice) -> None:
        self._progress.console.print(f"[yellow]{name}: retrying in {notice.wait:.1f}s ({notice.reason})[/yellow]")


class _QuietRmaProgress:
    """Progress when stderr is not a terminal: only retries are worth a line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def rows(self, name: str, done: int, total: int) -> None:
        return None

    def retry(self, name: str, notice: RetryNotice) -> None:
        self._stream.write(f"{name}: retrying in {notice.wait:.1f}s ({notice.reason})\n")


@contextmanager
def rma_progress(*, enabled: bool | None = None, stream: IO[str] | None = None) -> Iterator[Any]:
    """A progress listener for RMA queries: a bar on a terminal, quiet otherwise."""
    stream = stream or sys.stderr
    if enabled is None:
        enabled = stream.isatty()
    if not enabled:
        yield _QuietRmaProgress(stream)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("fetching {task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn(),
        console=Console(file=stream), transient=True,
    ) as progress:  # fmt: skip
        yield RmaProgressBar(progress)


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


class FetchLog:
    """Fetch events as one line each on stderr: for logs, cron mail and pipes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        from ecephys_dl.sizes import format_size

        total = format_size(size) if size is not None else "unknown size"
        self._line(f"resumed {name} at {resumed_from} of {total}" if resumed_from else f"started {name} ({total})")

    def advanced(self, name: str, nbytes: int) -> None:
        return None

    def retried(self, name: str, notice: RetryNotice) -> None:
        self._line(f"retrying {name} in {notice.wait:.1f}s: {notice.reason}")

    def restarted(self, name: str, reason: str) -> None:
        self._line(f"restarted {name}: {reason}")

    def note(self, name: str, message: str) -> None:
        self._line(f"{name}: {message}")

    def skipped(self, name: str, reason: str) -> None:
        return None

    def verified(self, name: str, size: int) -> None:
        self._line(f"verified {name} ({size} bytes)")

    def failed(self, name: str, message: str) -> None:
        self._line(f"failed {name}: {message}")


class FetchBars(FetchLog):
    """Fetch events on a terminal: a bar per active file and one for the whole run."""

    def __init__(self, progress: Any, total: int) -> None:
        super().__init__(stream=progress.console.file)
        self._progress = progress
        self._overall = progress.add_task("all files", total=total or None)
        self._tasks: dict[str, Any] = {}

    def _line(self, text: str) -> None:
        self._progress.console.print(text, highlight=False, markup=False)

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=size, completed=resumed_from)
        if resumed_from:
            self._line(f"resuming {name} at {resumed_from} bytes")

    def advanced(self, name: str, nbytes: int) -> None:
        task = self._tasks.get(name)
        if task is not None:
            self._progress.advance(task, nbytes)
        self._progress.advance(self._overall, nbytes)

    def restarted(self, name: str, reason: str) -> None:
        task = self._tasks.get(name)
        if task is not None:
            self._progress.reset(task)
        self._line(f"restarted {name}: {reason}")

    def verified(self, name: str, size: int) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            self._progress.remove_task(task)
        self._line(f"verified {name}")

    def failed(self, name: str, message: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            self._progress.remove_task(task)
        self._line(f"failed {name}: {message}")


@contextmanager
def fetch_progress(total_bytes: int, *, enabled: bool | None = None, quiet: bool = False, stream: IO[str] | None = None) -> Iterator[Any]:
    """The fetch listener: bars on a terminal, one line per event otherwise, errors only when quiet."""
    stream = stream or sys.stderr
    if quiet:
        yield _QuietFetch(stream)
        return
    if enabled is None:
        enabled = stream.isatty()
    if not enabled:
        yield FetchLog(stream)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}", style="bold"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
        TimeRemainingColumn(), console=Console(file=stream), transient=True,
    ) as progress:  # fmt: skip
        yield FetchBars(progress, total_bytes)


class _QuietFetch(FetchLog):
    """-q: only failures."""

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        return None

    def retried(self, name: str, notice: RetryNotice) -> None:
        return None

    def restarted(self, name: str, reason: str) -> None:
        return None

    def note(self, name: str, message: str) -> None:
        return None

    def verified(self, name: str, size: int) -> None:
        return None


def render_plan(prepared: Any, out: IO[str]) -> None:
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


def render_summary(summary: Any, out: IO[str]) -> None:
    """The end-of-run summary: counts, bytes, time, mean speed, and each failure."""
    from ecephys_dl.sizes import format_size

    speed = summary.bytes_fetched / summary.seconds if summary.seconds > 0 else 0.0
    out.write(
        f"fetched {summary.count('fetched')}, skipped {summary.count('skipped')}, failed {summary.count('failed')}"
        f"{', cancelled' if summary.cancelled else ''}; {format_size(summary.bytes_fetched)} in {summary.seconds:.1f} s"
        f" ({format_size(speed)}/s)\n"
    )
    for outcome in summary.outcomes:
        if outcome.status == "failed":
            out.write(f"  failed {outcome.relative}: {outcome.message}\n")


def render_verify(report: Any, out: IO[str]) -> None:
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


def verify_summary_line(summary: Any) -> str:
    """The one-line summary of a verify pass: files, bytes, ok, problems by kind, time, what is left."""
    from ecephys_dl.sizes import format_size

    problems = "".join(f", {count} {status}" for status, count in summary.problems.items())
    line = (f"{summary.level} check of {summary.files} files ({format_size(summary.bytes)}): {summary.ok} ok{problems}"
            f" in {summary.seconds:.1f} s")  # fmt: skip
    if summary.carried:
        line += f"; {summary.carried} of them checked earlier in this pass"
    if not summary.complete:
        line += f"; stopped by the time limit: {summary.remaining} files left (the next run at this level continues)"
    return line


class VerifyBar:
    """A verify pass on a terminal: one bar over the bytes to read, and the problems found so far."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._task = progress.add_task("verifying", total=None)
        self._files = 0
        self._problems = 0

    def total(self, nbytes: int) -> None:
        self._progress.update(self._task, total=nbytes or None)

    def advanced(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def checked(self, result: Any) -> None:
        self._files += 1
        self._problems += 1 if result.status.fails else 0
        found = f", {self._problems} with problems" if self._problems else ""
        self._progress.update(self._task, description=f"verified {self._files} files{found}")


class _SilentVerify:
    """A verify pass off a terminal: the report says it all at the end."""

    def total(self, nbytes: int) -> None:
        return None

    def advanced(self, nbytes: int) -> None:
        return None

    def checked(self, result: Any) -> None:
        return None


@contextmanager
def verify_progress(total_bytes: int = 0, enabled: bool | None = None, *, stream: IO[str] | None = None) -> Iterator[Any]:
    """The verify listener: a bar over bytes on a terminal (stderr), silent otherwise."""
    stream = stream or sys.stderr
    if enabled is None:
        enabled = stream.isatty()
    if not enabled:
        yield _SilentVerify()
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}", style="bold"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
        TimeRemainingColumn(), console=Console(file=stream), transient=True,
    ) as progress:  # fmt: skip
        bar = VerifyBar(progress)
        if total_bytes:
            bar.total(total_bytes)
        yield bar

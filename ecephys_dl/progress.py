"""What people see while a command runs: progress bars on a terminal, one line per event otherwise.

Everything here writes to stderr (results go to stdout, from :mod:`ecephys_dl.ui`). A fetch has
one listener for the whole run (:func:`fetch_progress`): the metadata queries, the plan, each
file's events and the run's notices, drawn by a single rich display, so nothing is drawn twice.
Off a terminal the same events are plain lines for logs and cron mail; ``-q`` keeps failures,
notices and retries of the metadata queries only.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING

from ecephys_dl.sizes import format_size

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ecephys_dl.fetch import Prepared
    from ecephys_dl.retry import RetryNotice
    from ecephys_dl.verify import FileResult

__all__ = ["FetchBars", "FetchLog", "RmaProgressBar", "fetch_progress", "rma_progress", "verify_progress"]


def _bars(stream: IO[str], *, downloads: bool) -> Progress:
    """A rich display on ``stream``: bytes, speed and time left per task; a task made with
    ``rows=True`` (an RMA query) shows its rows instead."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        def __init__(self) -> None:
            super().__init__()
            self._bytes, self._rows = DownloadColumn(binary_units=True), MofNCompleteColumn()

        def render(self, task: Task) -> Text:
            return self._rows.render(task) + " rows" if task.fields.get("rows") else self._bytes.render(task)

    class Pace(ProgressColumn):
        def __init__(self) -> None:
            super().__init__()
            self._speed, self._left, self._elapsed = TransferSpeedColumn(), TimeRemainingColumn(), TimeElapsedColumn()

        def render(self, task: Task) -> Text:
            if task.fields.get("rows"):
                return self._elapsed.render(task)
            return self._speed.render(task) + " " + self._left.render(task)

    if not downloads:
        return Progress(TextColumn("fetching {task.description}"), BarColumn(), Amount(), Pace(), console=Console(file=stream), transient=True)
    return Progress(TextColumn("{task.description}", style="bold"), BarColumn(), Amount(), Pace(), console=Console(file=stream), transient=True)


class RmaProgressBar:
    """Pages and rows of RMA queries as bars; a query's bar goes when its rows are all in."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}
        self._done: set[str] = set()

    def rows(self, name: str, done: int, total: int) -> None:
        if name in self._done:
            return
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(f"{name}", total=total, rows=True)
        self._progress.update(self._tasks[name], completed=done, total=total)
        if done >= total:
            self._progress.remove_task(self._tasks.pop(name))
            self._done.add(name)

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
def rma_progress(*, enabled: bool | None = None, stream: IO[str] | None = None) -> Iterator[RmaProgressBar | _QuietRmaProgress]:
    """A progress listener for RMA queries: a bar on a terminal, quiet otherwise."""
    stream = stream or sys.stderr
    if enabled is None:
        enabled = stream.isatty()
    if not enabled:
        yield _QuietRmaProgress(stream)
        return
    with _bars(stream, downloads=False) as progress:
        yield RmaProgressBar(progress)


class FetchLog:
    """A fetch run's events as one line each on stderr: for logs, cron mail and pipes."""

    def __init__(self, stream: IO[str] | None = None, *, verbose: bool = True) -> None:
        self._stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._verbose = verbose  # per-file notes (ranges split, servers ignoring ranges) only with -v
        self.began = threading.Event()  # the plan is made: transfers are about to begin

    def _line(self, text: str) -> None:
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()

    # The metadata queries.
    def rows(self, name: str, done: int, total: int) -> None:
        return None

    def retry(self, name: str, notice: RetryNotice) -> None:
        self._line(f"{name}: retrying in {notice.wait:.1f}s ({notice.reason})")

    # The run.
    def planned(self, prepared: Prepared) -> None:
        for session_id, probe_id in prepared.unavailable:
            self.notice(f"LFP not available for probe {probe_id} of session {session_id} (not a failure)")
        self.began.set()

    def notice(self, message: str) -> None:
        self._line(message)

    # Each file.
    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        total = format_size(size) if size is not None else "unknown size"
        self._line(f"resumed {name} at {resumed_from} of {total}" if resumed_from else f"started {name} ({total})")

    def advanced(self, name: str, nbytes: int) -> None:
        return None

    def retried(self, name: str, notice: RetryNotice) -> None:
        self._line(f"retrying {name} in {notice.wait:.1f}s: {notice.reason}")

    def restarted(self, name: str, reason: str) -> None:
        self._line(f"restarted {name}: {reason}")

    def note(self, name: str, message: str) -> None:
        if self._verbose:
            self._line(f"{name}: {message}")

    def skipped(self, name: str, reason: str) -> None:
        return None

    def verified(self, name: str, size: int) -> None:
        self._line(f"verified {name} ({size} bytes)")

    def failed(self, name: str, message: str, hint: str | None = None) -> None:
        self._line(f"failed {name}: {message}" + (f"\n  hint: {hint}" if hint else ""))


class FetchBars(FetchLog):
    """A fetch run on a terminal: the metadata queries' bars, then a bar per active file and one for the run."""

    def __init__(self, progress: Progress, *, verbose: bool = True) -> None:
        super().__init__(stream=progress.console.file, verbose=verbose)
        self._progress = progress
        self._queries = RmaProgressBar(progress)
        self._overall: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}

    def _line(self, text: str) -> None:
        self._progress.console.print(text, highlight=False, markup=False)

    def rows(self, name: str, done: int, total: int) -> None:
        self._queries.rows(name, done, total)

    def retry(self, name: str, notice: RetryNotice) -> None:
        self._queries.retry(name, notice)

    def planned(self, prepared: Prepared) -> None:
        self._overall = self._progress.add_task("all files", total=prepared.to_fetch or None)
        super().planned(prepared)

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=size, completed=resumed_from)
        if resumed_from:
            self._line(f"resuming {name} at {resumed_from} bytes")

    def advanced(self, name: str, nbytes: int) -> None:
        task = self._tasks.get(name)
        if task is not None:
            self._progress.advance(task, nbytes)
        if self._overall is not None:
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

    def failed(self, name: str, message: str, hint: str | None = None) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            self._progress.remove_task(task)
        super().failed(name, message, hint)


class _QuietFetch(FetchLog):
    """-q: only failures, the run's notices and the metadata queries' retries."""

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


@contextmanager
def fetch_progress(*, enabled: bool | None = None, quiet: bool = False, verbose: bool = True, stream: IO[str] | None = None) -> Iterator[FetchLog]:
    """The listener of a fetch run: bars on a terminal, one line per event otherwise, errors only when quiet."""
    stream = stream or sys.stderr
    if quiet:
        yield _QuietFetch(stream)
        return
    if enabled is None:
        enabled = stream.isatty()
    if not enabled:
        yield FetchLog(stream, verbose=verbose)
        return
    with _bars(stream, downloads=True) as progress:
        yield FetchBars(progress, verbose=verbose)


class VerifyBar:
    """A verify pass on a terminal: one bar over the bytes to read, and the problems found so far."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = progress.add_task("verifying", total=None)
        self._files = 0
        self._problems = 0

    def total(self, nbytes: int) -> None:
        self._progress.update(self._task, total=nbytes or None)

    def advanced(self, nbytes: int) -> None:
        self._progress.advance(self._task, nbytes)

    def checked(self, result: FileResult) -> None:
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

    def checked(self, result: FileResult) -> None:
        return None


@contextmanager
def verify_progress(total_bytes: int = 0, enabled: bool | None = None, *, stream: IO[str] | None = None) -> Iterator[VerifyBar | _SilentVerify]:
    """The verify listener: a bar over bytes on a terminal (stderr), silent otherwise."""
    stream = stream or sys.stderr
    if enabled is None:
        enabled = stream.isatty()
    if not enabled:
        yield _SilentVerify()
        return
    with _bars(stream, downloads=True) as progress:
        bar = VerifyBar(progress)
        if total_bytes:
            bar.total(total_bytes)
        yield bar

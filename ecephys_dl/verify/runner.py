"""The runner of a verify pass: which files, in which order, how many at a time, and the pass state."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from ecephys_dl.layout import STATE_DIR, CacheLayout, FileKind, classify, is_leftover, safe_relative, session_id_of_dir
from ecephys_dl.published import PUBLISHED_PREFIX, PublishedTable
from ecephys_dl.records import RecordStore
from ecephys_dl.verify.checks import check, leftover, missing
from ecephys_dl.verify.context import Context, Signature, Stopped, Target, share, signature
from ecephys_dl.verify.model import NWB_KINDS, ExpectedFile, FileResult, Level, Status, VerifyProgress, VerifyReport, VerifySummary, count_problems, kind_of
from ecephys_dl.verify.state import Checked, PassState, close_pass, load_state, open_pass, save_state

__all__ = ["verify_cache"]

# The state is written at most this often (and at the end), not after each file.
_SAVE_EVERY = 5.0


# -- finding the files ---------------------------------------------------------------------------


def _listing(folder: str | Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def _checkable(relative: str) -> bool:
    """A file of the AllenSDK tree that a pass looks for (stimulus templates only when recorded)."""
    place = classify(relative)
    return place is not None and place.kind is not FileKind.STIMULUS_TEMPLATE


def _discover(root: Path) -> tuple[list[str], list[str]]:
    """(files at known paths, leftovers) under ``root``: one directory listing per folder."""
    found: list[str] = []
    leftovers: list[str] = []
    for entry in _listing(root):
        if is_leftover(entry.name):
            leftovers.append(entry.name)
        elif not entry.is_dir():
            if _checkable(entry.name):
                found.append(entry.name)
        elif session_id_of_dir(entry.name) is not None or entry.name.startswith("natural_"):
            for inner in _listing(entry.path):
                relative = f"{entry.name}/{inner.name}"
                if is_leftover(inner.name):
                    leftovers.append(relative)
                elif _checkable(relative):
                    found.append(relative)
        elif entry.name == STATE_DIR and not entry.is_symlink():
            # Records and the pass state are written atomically too, and may leave the same leftovers.
            for folder, _, names in os.walk(entry.path):
                place = Path(folder).relative_to(root).as_posix()
                leftovers += [f"{place}/{name}" for name in names if is_leftover(name)]
    return found, leftovers


def _targets(root: Path, records: RecordStore, expected: Sequence[ExpectedFile], published: PublishedTable | None) -> tuple[list[Target], list[str]]:
    """The files to check (found, recorded or expected), in path order, and the leftovers found."""
    found, leftovers = _discover(root)
    recorded = {r.path: r for r in records.all()}
    sizes: dict[str, int | None] = {}
    for item in expected:
        if not safe_relative(item.relative):
            raise ValueError(f"not a path inside the cache: {item.relative!r}")
        sizes[item.relative] = item.size
    targets = []
    for relative in sorted(set(found) | set(recorded) | set(sizes)):
        place = classify(relative)
        record = recorded.get(relative)
        kind = kind_of(place.kind if place else None)
        facts = published.by_path(relative) if published is not None and kind in NWB_KINDS else None
        size = record.size if record is not None else facts.size if facts is not None else sizes.get(relative)
        targets.append(Target(relative, kind, place, record, size, wanted=relative in sizes, published=facts))
    return targets, leftovers


# -- the pass ------------------------------------------------------------------------------------


class _Serialised:
    """A progress listener whose calls from the worker threads come one at a time."""

    def __init__(self, progress: VerifyProgress | None) -> None:
        self._progress = progress
        self._lock = threading.Lock()

    def total(self, nbytes: int) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.total(nbytes)

    def advanced(self, nbytes: int) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.advanced(nbytes)

    def checked(self, result: FileResult) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.checked(result)


def verify_cache(
    cache_dir: Path,
    *,
    level: Level = Level.STANDARD,
    jobs: int = 4,
    expected: Sequence[ExpectedFile] = (),
    clean: bool = False,
    time_limit: float | None = None,
    progress: VerifyProgress | None = None,
    clock: Callable[[], float] = time.monotonic,
    published: PublishedTable | None = None,
) -> VerifyReport:
    """Check the cache's files at ``level``, ``jobs`` files at a time, and report on each.

    With ``time_limit`` (seconds by ``clock``) no file is started after that long, except the
    first, which every call checks; the files not reached are not reported, and the next call at
    the same level continues the pass. ``expected`` files that are absent are reported
    ``missing``. ``clean`` removes stray partials older than :data:`CLEAN_AFTER` seconds.
    ``published``: the release's published sizes and SHA-256s, which NWB files are held against
    (quick: the size; deep: the SHA-256, ``differs-from-published`` when it is not the archive's).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    level = Level(level)
    started = clock()
    root = Path(cache_dir)
    layout = CacheLayout(root)
    records = RecordStore(layout)
    listener = _Serialised(progress)
    targets, leftovers = _targets(root, records, expected, published)
    state, current, earlier = open_pass(load_state(layout), level)
    checked: dict[str, Checked] = {}

    def now_state() -> PassState:
        """The state with this call's files checked so far."""
        return state.with_pass(replace(current, checked=dict(checked)))

    results: dict[str, FileResult] = {}
    todo: list[Target] = []
    total = 0
    for target in targets:
        try:
            info = (root / target.relative).stat()
        except FileNotFoundError:
            # Cheap to say, so said at once, whatever the time limit, and never carried over.
            results[target.relative] = missing(root, target)
            listener.checked(results[target.relative])
            continue
        except OSError:
            todo.append(target)  # the check says what is wrong with it
            continue
        before = earlier.get(target.relative)
        if before is not None and before.signature == signature(info) and before.result.kind is target.kind and before.result.reference == target.reference:
            results[target.relative] = before.result
            checked[target.relative] = before
            continue
        todo.append(target)
        total += share(target, info.st_size, level)
    carried = len(checked)
    listener.total(total)

    last_save = clock()

    def done(result: FileResult, found: Signature | None) -> None:
        # Called under the pass's lock.
        nonlocal last_save
        results[result.path] = result
        if found is not None:
            checked[result.path] = Checked(result, found)
        if clock() - last_save >= _SAVE_EVERY:
            last_save = clock()
            save_state(layout, now_state())

    def time_is_up() -> bool:
        return time_limit is not None and clock() - started >= time_limit

    ctx = Context(root, level, records, threading.Event(), listener.advanced)
    closed: PassState | None = None
    try:
        reached = _run_checks(ctx, todo, jobs=jobs, time_is_up=time_is_up, checked=listener.checked, done=done)
        now = time.time()
        for relative in sorted(set(leftovers)):
            results[relative] = leftover(root, relative, clean=clean, now=now)
            listener.checked(results[relative])
        ordered = tuple(results[k] for k in sorted(results))
        seconds = clock() - started
        data = [r for r in ordered if r.status not in (Status.MISSING, Status.STRAY_PARTIAL)]
        summary = VerifySummary(files=len(ordered), bytes=sum(r.size or 0 for r in data),
                                ok=sum(1 for r in ordered if r.status is Status.OK), problems=count_problems(ordered),
                                seconds=seconds, complete=reached == len(todo), level=level, carried=carried,
                                remaining=len(todo) - reached,
                                published_ok=sum(1 for r in ordered if r.status is Status.OK and r.reference.startswith(PUBLISHED_PREFIX)))  # fmt: skip
        closed = close_pass(now_state(), replace(current, checked=dict(checked)), summary)
    finally:
        save_state(layout, closed if closed is not None else now_state())
    return VerifyReport(ordered, summary)


def _run_checks(ctx: Context, todo: Sequence[Target], *, jobs: int, time_is_up: Callable[[], bool],
                checked: Callable[[FileResult], None], done: Callable[[FileResult, Signature | None], None]) -> int:  # fmt: skip
    """Check the files, ``jobs`` at a time, starting none once the time is up; how many were checked.

    The first file is started whatever the time: every call with a time limit makes progress, so
    calls repeated with however short a limit finish the pass.
    """
    lock = threading.Lock()
    queue = iter(todo)
    reached = 0
    started = 0

    def worker() -> None:
        nonlocal reached, started
        while True:
            with lock:
                if ctx.stop.is_set() or (started and time_is_up()):
                    return
                target = next(queue, None)
                started += 1
            if target is None:
                return
            try:
                result, signature = check(ctx, target)
            except Stopped:
                return
            with lock:
                reached += 1
                done(result, signature)
            checked(result)

    workers = min(jobs, max(1, len(todo)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            ctx.stop.set()  # the other workers stop at their next read; the caller keeps the state
            raise
    return reached

"""The checkpointer: which bytes of a part are on disk, told to its record as the transfer goes.

It keeps the bookkeeping of one pass at a file, the ranges *written* (a pwrite returned) and
those *synced* (written before an ``fdatasync`` began), and writes the record
(:mod:`ecephys_dl.partial`): every ``record_seconds`` from a thread of its own when something
was written, synced every ``sync_seconds`` or ``sync_bytes``, and whenever the engine asks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ecephys_dl import partial
from ecephys_dl.facts import FileFacts
from ecephys_dl.partial import Origin, Ranges
from ecephys_dl.pieces import Pieces

if TYPE_CHECKING:
    from ecephys_dl.routing import Router

__all__ = ["Checkpointer"]


class Checkpointer:
    """The record of one pass at a part: what ``pieces`` hold beyond the ranges ``kept`` from earlier.

    ``lock`` is the engine's lock around ``pieces``; the counters :attr:`changes` and
    :attr:`unsynced` are guarded by it too, and the engine adds to them as it writes. With a
    ``router`` that mixes sources, the record also says which source gave which bytes
    (``kept_origins``: those of the ranges kept from earlier).
    """

    def __init__(
        self,
        side: Path,
        url: str,
        facts: FileFacts,
        pieces: Pieces,
        kept: Ranges,
        lock: threading.Lock,
        *,
        record_seconds: float,
        sync_seconds: float,
        sync_bytes: int,
        router: Router | None = None,
        kept_origins: dict[str, Ranges] | None = None,
    ) -> None:
        self.router = router if router is not None and router.mix else None
        self.kept_origins = kept_origins or {}
        self.side = side
        self.url = url
        self.facts = facts
        self.pieces = pieces
        self.kept = kept
        self.lock = lock
        self.record_seconds = record_seconds
        self.sync_seconds = sync_seconds
        self.sync_bytes = sync_bytes
        self.fd = -1  # the part, once the engine opened it
        self.unsynced = 0  # bytes written since the last sync (under lock)
        self.changes = 0  # writes since the last record (under lock)
        self.synced: Ranges = kept  # what the record may claim past a power loss
        self.last_sync = time.monotonic()
        self._writing = threading.Lock()  # one record write at a time
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None

    def checkpoint(self, *, sync: bool) -> None:
        """Record the ranges written so far; with ``sync``, make them and the record durable first.

        A range is recorded only after its pwrite returned. Synced ranges are those written
        before an ``fdatasync`` began: only they are claimed past a power loss.
        """
        with self._writing:
            with self.lock:
                # pos only moves after its pwrite returned, so these bytes are in the file.
                written = partial.merge([*self.kept, *self.pieces.written()])
                by_source = self._by_source()
                self.changes = 0
                if sync:
                    self.unsynced = 0
            if sync:
                os.fdatasync(self.fd)
                self.synced = written
                self.last_sync = time.monotonic()
            # Synced ranges a rollback or a restart took back are not the file's any more.
            synced = partial.intersect(self.synced, written)
            facts = self.facts.now()
            record = partial.Record(self.url, facts.size, facts.validator.etag, facts.validator.last_modified, synced,
                                    written if written != synced else (), partial.boot_id(), self._origins(by_source, written))  # fmt: skip
            partial.write_record(self.side, record, durable=sync)

    def _by_source(self) -> dict[str, Ranges]:
        """Under ``lock``: the ranges each source gave, kept ones included (mixed sources only)."""
        if self.router is None:
            return {}
        return {link.source: partial.merge([*self.kept_origins.get(link.source, ()), *self.pieces.written_by(link.source)])
                for link in self.router.links}  # fmt: skip

    def _origins(self, by_source: dict[str, Ranges], written: Ranges) -> tuple[Origin, ...]:
        router = self.router
        if router is None:
            return ()
        origins = []
        for source, ranges in by_source.items():
            mine = partial.intersect(ranges, written)
            if mine:
                link, validator = router.link(source), router.validator(source)
                origins.append(Origin(source, link.url, validator.etag, validator.last_modified, mine))
        return tuple(origins)

    def start(self, name: str, failed: Callable[[BaseException], None]) -> None:
        """Record the part open at :attr:`fd` from now on: durably at once, then from a thread; ``failed`` hears its errors."""
        self.checkpoint(sync=True)  # a part never exists without its record
        self._thread = threading.Thread(target=self._run, args=(failed,), name=f"record {name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (the writers are done); the caller makes the last checkpoint."""
        self._finished.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, failed: Callable[[BaseException], None]) -> None:
        """Every ``record_seconds`` record what was written; sync it every ``sync_seconds`` or ``sync_bytes``."""
        while not self._finished.wait(self.record_seconds):
            with self.lock:
                changed, unsynced = self.changes, self.unsynced
            if not changed:
                continue
            due = unsynced >= self.sync_bytes or time.monotonic() - self.last_sync >= self.sync_seconds
            try:
                self.checkpoint(sync=due)
            except OSError as error:
                failed(error)
                return

"""The sources of one file's download: which may still serve it, their validators, and drops.

A :class:`Router` belongs to one download. With ``mix`` every source whose size agrees takes
pieces of the file at once, each request going where :func:`~ecephys_dl.health.pick` says, each
source answering ``If-Range`` against its own validator (ETag, Last-Modified). A source that
stalls or answers wrongly is dropped for the file at once, one that fails twice in a row too
(:func:`drop_now`); its pieces go to the others, and never straight back to it. The last source
standing is never dropped: the retry policy then applies to it as to a single source.

Without ``mix`` one source serves the whole file (:attr:`Router.current`); :meth:`Router.fail_over`
moves to the next when it failed for good. No I/O beyond the listener's notes.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence

from ecephys_dl.contract import SourceLink, SourceShare, TransferListener
from ecephys_dl.facts import Facts, FileFacts, Validator
from ecephys_dl.health import Failure, SourceHealth

__all__ = ["Router", "drop_now"]

# Failures in a row (no byte between) after which a source is dropped for the file.
STRIKES = 2


def drop_now(how: Failure, strikes: int, others: int) -> bool:
    """Whether a source that just failed this way (``strikes`` failures in a row, counting this one)
    is dropped for the file, when ``others`` sources could take its pieces."""
    if others == 0:
        return False  # the last source is never dropped: the retry policy goes on with it
    return how is not Failure.ERROR or strikes >= STRIKES


class Router:
    """The sources one download may use, in the run's order, and what is known of each."""

    def __init__(self, links: Sequence[SourceLink], *, mix: bool, health: SourceHealth, listener: TransferListener, name: str) -> None:
        assert links
        self.links = tuple(links)
        self.mix = mix
        self.health = health
        self.listener = listener
        self.name = name
        self._by_name = {link.source: link for link in self.links}
        self._validators = {link.source: Validator(link.etag, None) for link in self.links}
        self._strikes = dict.fromkeys(self._by_name, 0)
        self._dropped: dict[str, str] = {}
        self._written: dict[str, int] = {}
        self._current = 0
        self._lock = threading.Lock()
        health.known([link.source for link in self.links])

    # -- which sources ---------------------------------------------------------------------------

    @property
    def current(self) -> SourceLink:
        """The source serving the whole file, without ``mix``; the first of the run's order with it."""
        return self.links[self._current]

    def link(self, source: str) -> SourceLink:
        return self._by_name[source]

    def usable(self) -> list[str]:
        """The sources that may still serve pieces of the file, in order."""
        if not self.mix:
            return [self.current.source]
        with self._lock:
            return [s for s in self._by_name if s not in self._dropped and self.health.dropped(s) is None]

    def acquire(self, avoid: Collection[str], stop: threading.Event) -> SourceLink | None:
        """A connection slot on the best usable source not in ``avoid`` (waiting for one); None when stopped."""
        usable = self.usable()
        if not usable:
            usable = [self.current.source]  # every one was dropped for the run: the file still has this one
        if set(usable) <= set(avoid):
            avoid = ()  # every source failed this piece: it goes back to them, under the retry policy
        chosen = self.health.acquire(usable, avoid, stop)
        return None if chosen is None else self._by_name[chosen]

    def release(self, source: str) -> None:
        self.health.release(source)

    def fail_over(self, reason: str) -> SourceLink | None:
        """Without ``mix``: the current source failed the file for good; the next one, if any."""
        with self._lock:
            previous = self.current.source
            self._dropped[previous] = reason
            for index in range(self._current + 1, len(self.links)):
                if self.health.dropped(self.links[index].source) is None:
                    self._current = index
                    break
            else:
                return None
            chosen = self.current
        self.listener.note(self.name, f"source {previous} failed the file ({reason}): it starts again from {chosen.source}")
        return chosen

    def start_with(self, url: str) -> None:
        """Without ``mix``: begin with the source a partial on disk came from, so it is resumed."""
        for index, link in enumerate(self.links):
            if link.url == url:
                self._current = index
                return

    # -- what is known of each --------------------------------------------------------------------

    def facts(self, source: str, file: FileFacts) -> Facts:
        """The file's facts as one source's answers are judged: its size, and that source's validator."""
        facts = file.now()
        if not self.mix:
            return facts
        with self._lock:
            return Facts(facts.size, self._validators[source], facts.ceiling)

    def learn(self, source: str, validator: Validator) -> None:
        """A source's answer was accepted: its validator (if it had none yet), and its strikes are forgiven."""
        with self._lock:
            if not self._validators[source].known:
                self._validators[source] = validator
            self._strikes[source] = 0

    def validator(self, source: str) -> Validator:
        with self._lock:
            return self._validators[source]

    def failed(self, source: str, how: Failure, reason: str) -> bool:
        """A request to ``source`` failed: True when it is dropped for the file (its pieces go elsewhere)."""
        self.health.failed(source, how)
        if not self.mix:
            return False
        with self._lock:
            self._strikes[source] += 1
            others = sum(1 for s in self._by_name if s != source and s not in self._dropped and self.health.dropped(s) is None)
            if source in self._dropped or not drop_now(how, self._strikes[source], others):
                return source in self._dropped
            self._dropped[source] = reason
        self.listener.note(self.name, f"source {source} dropped for this file: {reason}; its pieces go to the others")
        for_run = self.health.dropped_for_file(source)
        if for_run is not None:
            self.listener.note(self.name, f"source {source} dropped for the rest of the run: {for_run}")
        return True

    def add_written(self, by_source: dict[str, int]) -> None:
        """A pass at the file ended having written these bytes from each source."""
        with self._lock:
            for source, count in by_source.items():
                self._written[source] = self._written.get(source, 0) + count

    def shares(self) -> tuple[SourceShare, ...]:
        """Each source's bytes for the file, and why it was dropped, in the run's order."""
        with self._lock:
            return tuple(
                SourceShare(s, self._written.get(s, 0), self._dropped.get(s))
                for s in self._by_name
                if self._written.get(s) or s in self._dropped
            )

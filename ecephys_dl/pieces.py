"""The piece scheduler: which bytes of a file each connection fetches next.

The missing bytes are cut into pieces of at most ``segment_size``, handed out in file order so
the file fills from the front; a connection that runs out of work takes the second half of the
in-flight piece with the most bytes left, down to ``min_segment``. No threads and no I/O: the
engine holds its lock around every call, and moves a :class:`Segment`'s ``pos`` as it writes.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Pieces", "Segment"]


class Segment:
    """A byte range one connection fills: ``start`` fixed, ``pos`` written up to, ``end`` movable.

    ``reserved`` is where the write in progress will end: a split never cuts below it.
    ``high`` is the furthest ``pos`` ever reached (a single stream starts again from 0).
    ``source`` is the source its bytes come from (one per segment); ``avoid`` the sources that
    just failed it.
    """

    __slots__ = ("avoid", "end", "high", "pos", "reserved", "source", "start")

    def __init__(self, start: int, end: int | None) -> None:
        self.start = self.pos = self.reserved = self.high = start
        self.end = end
        self.source: str | None = None
        self.avoid: frozenset[str] = frozenset()

    @property
    def finished(self) -> bool:
        return self.end is not None and self.pos >= self.end

    @property
    def left(self) -> int:
        return 0 if self.end is None else self.end - self.reserved

    def __repr__(self) -> str:
        return f"Segment({self.start}, {self.end}, pos={self.pos})"


class Pieces:
    """The segments of one pass at a file and those waiting for a connection, in file order."""

    def __init__(self, *, connections: int, segment_size: int, min_segment: int) -> None:
        self.connections = connections
        self.segment_size = segment_size
        self.min_segment = min_segment
        self.segments: list[Segment] = []  # every segment made, in flight, waiting or done
        self.pending: list[Segment] = []  # waiting for a connection, by start
        self.spread = False  # the missing bytes were cut into pieces

    def begin(self, holes: Iterable[tuple[int, int]] | None) -> None:
        """The missing ranges to fetch (None: the size is unknown, one range from byte 0), all waiting."""
        self.segments = [Segment(start, end) for start, end in holes] if holes is not None else [Segment(0, None)]
        self.pending = list(self.segments)

    def only(self, segment: Segment) -> None:
        """``segment`` is the one stream: nothing else is fetched."""
        self.segments, self.pending = [segment], []

    def take(self) -> Segment | None:
        """The first waiting piece, if any."""
        return self.pending.pop(0) if self.pending else None

    def cut_up(self) -> None:
        """Cut the missing bytes into pieces of at most ``segment_size``, handed out in order.

        With fewer pieces than connections, the largest are halved (none below ``min_segment``)
        so every connection has one. A single connection gets each missing range whole.
        """
        self.spread = True
        # One connection streams the file in order anyway: one request, not one per piece.
        for segment in [s for s in self.segments if not s.finished and s.end is not None and self.connections > 1]:
            while segment.left > self.segment_size:
                segment = self._cut(segment, segment.reserved + self.segment_size)
                self.pending.append(segment)
        while sum(1 for s in self.segments if not s.finished) < self.connections:
            open_ = [s for s in self.segments if not s.finished and s.left >= 2 * self.min_segment]
            if not open_:
                break
            self.pending.append(self._split(max(open_, key=lambda s: s.left)))
        self.pending.sort(key=lambda s: s.start)

    def steal(self) -> Segment | None:
        """For an idle connection: the second half of the piece with the most bytes left, if above ``2 * min_segment``."""
        open_ = [s for s in self.segments if not s.finished and s.left > 2 * self.min_segment]
        if not open_:
            return None
        return self._split(max(open_, key=lambda s: s.left))

    def prefix(self, size: int | None, kept: Iterable[tuple[int, int]]) -> int:
        """Up to where the file is on disk from byte 0, in order (``kept``: the ranges of an earlier run)."""
        open_ = [s.pos for s in self.segments if not s.finished]
        if open_:
            return min(open_)
        if self.segments:
            return size or 0  # every segment is full
        # Before the segments are made, or with none to make: the kept bytes from byte 0.
        first = next(iter(kept), None)
        return first[1] if first is not None and first[0] == 0 else 0

    @property
    def done(self) -> bool:
        """Every segment is full."""
        return all(s.finished for s in self.segments)

    @property
    def missing(self) -> int:
        """Bytes the segments still lack (those of known end)."""
        return sum(max(0, (s.end or s.pos) - s.pos) for s in self.segments)

    def written(self) -> list[tuple[int, int]]:
        """The ranges the segments hold so far (up to each ``pos``)."""
        return [(s.start, s.pos) for s in self.segments if s.pos > s.start]

    def written_by(self, source: str) -> list[tuple[int, int]]:
        """The ranges the segments of one source hold so far."""
        return [(s.start, s.pos) for s in self.segments if s.pos > s.start and s.source == source]

    def relabel(self, segment: Segment, source: str) -> None:
        """``segment``'s next bytes come from ``source``: what it holds from another stays that one's
        (a finished segment of its own), and the segment goes on from its ``pos``."""
        if segment.source == source:
            return
        if segment.source is not None and segment.pos > segment.start:
            done = Segment(segment.start, segment.pos)
            done.pos = done.reserved = done.high = segment.pos
            done.source = segment.source
            self.segments.append(done)
            segment.start = segment.pos
        segment.source = source

    def _split(self, victim: Segment) -> Segment:
        """Give the second half of ``victim``'s bytes to a new segment."""
        return self._cut(victim, victim.reserved + victim.left // 2)

    def _cut(self, victim: Segment, at: int) -> Segment:
        """Give ``victim``'s bytes from ``at`` on to a new segment."""
        assert victim.end is not None and victim.reserved <= at <= victim.end
        piece = Segment(at, victim.end)
        victim.end = at
        self.segments.append(piece)
        return piece

"""Finding the source that lied: a file mixed from several sources whose SHA-256 is not the published one.

The published SHA-256 judges a whole file, not its pieces, so when a mixed file comes out
wrong the part's record (which source gave which bytes, :class:`~ecephys_dl.partial.Origin`) is
all there is to go on. :func:`suspects` orders the sources to try, cheapest first;
:func:`without` is the record with one suspect's bytes taken out, so a resume fetches exactly
those bytes again from the others. If the file then comes out right, that suspect served other
bytes than the published ones and is dropped for the run. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from ecephys_dl import partial
from ecephys_dl.partial import Origin, Record

__all__ = ["suspects", "without"]


def suspects(origins: Sequence[Origin], order: Sequence[str]) -> list[str]:
    """The sources to take out in turn: those that gave the fewest bytes first (the least to fetch
    again), ties in the run's ``order``; sources the record does not name are not suspects."""
    rank = {name: index for index, name in enumerate(order)}
    given = [o for o in origins if o.ranges]
    return [o.source for o in sorted(given, key=lambda o: (partial.total(o.ranges), rank.get(o.source, len(rank)), o.source))]


def without(record: Record, source: str) -> Record:
    """``record`` with the bytes ``source`` gave taken out of every tier."""
    theirs = next((o.ranges for o in record.origins if o.source == source), ())

    def rest(ranges: partial.Ranges) -> partial.Ranges:
        out: list[tuple[int, int]] = []
        for start, end in ranges:
            at = start
            for a, b in theirs:
                if b <= at or a >= end:
                    continue
                if a > at:
                    out.append((at, a))
                at = max(at, b)
            if at < end:
                out.append((at, end))
        return partial.merge(out)

    origins = tuple(o for o in record.origins if o.source != source)
    written = rest(record.written)
    return Record(record.url, record.size, record.etag, record.last_modified, rest(record.ranges), written, record.boot_id if written else None, origins)

"""The piece scheduler: pieces in file order, cut to segment_size, an idle connection's share split off."""

from __future__ import annotations

import pytest

from ecephys_dl.pieces import Pieces, Segment

KiB = 1024


def spans(segments: list[Segment]) -> list[tuple[int, int | None]]:
    return [(s.start, s.end) for s in segments]


@pytest.mark.parametrize(
    ("connections", "segment_size", "min_segment", "holes", "pending"),
    [
        # one missing range, cut into pieces of segment_size, in order
        (4, 100, 10, [(0, 400)], [(0, 100), (100, 200), (200, 300), (300, 400)]),
        # a short last piece
        (2, 100, 10, [(0, 250)], [(0, 100), (100, 200), (200, 250)]),
        # several holes (a resume): each cut, all in file order
        (2, 100, 10, [(0, 150), (300, 350)], [(0, 100), (100, 150), (300, 350)]),
        # fewer pieces than connections: the largest halved so each connection has one
        (4, 1000, 10, [(0, 400)], [(0, 100), (100, 200), (200, 300), (300, 400)]),
        # ... but never below min_segment (a half must be at least min_segment)
        (4, 1000, 100, [(0, 300)], [(0, 150), (150, 300)]),
        (4, 1000, 100, [(0, 199)], [(0, 199)]),
        # one connection: each missing range whole, one request
        (1, 100, 10, [(0, 400), (500, 600)], [(0, 400), (500, 600)]),
        # nothing missing: nothing to hand out
        (4, 100, 10, [], []),
    ],
)
def test_pieces_are_handed_out_in_file_order(
    connections: int, segment_size: int, min_segment: int, holes: list[tuple[int, int]], pending: list[tuple[int, int]]
) -> None:
    """The missing bytes are covered exactly once, by pieces of at most segment_size (with more than one
    connection), handed out by start, as many as the connections when the bytes allow it."""
    pieces = Pieces(connections=connections, segment_size=segment_size, min_segment=min_segment)
    pieces.begin(holes)
    pieces.cut_up()
    assert spans(pieces.pending) == pending
    handed = []
    while (piece := pieces.take()) is not None:
        handed.append((piece.start, piece.end))
    assert handed == pending and pieces.take() is None
    assert sorted(spans(pieces.segments)) == pending  # every segment is one of those handed out
    assert pieces.missing == sum(end - start for start, end in holes)


@pytest.mark.parametrize(
    ("segments", "min_segment", "stolen", "after"),
    [
        # (start, end, pos) in flight -> the piece an idle connection gets, the victims' ends after
        ([(0, 1000, 0)], 100, (500, 1000), [(0, 500)]),  # half of the only piece
        ([(0, 1000, 600)], 100, (800, 1000), [(0, 800)]),  # half of what is left, not of the piece
        ([(0, 1000, 0), (1000, 1400, 1000)], 100, (500, 1000), [(0, 500), (1000, 1400)]),  # the fullest
        ([(0, 1000, 900), (1000, 1400, 1000)], 10, (1200, 1400), [(0, 1000), (1000, 1200)]),  # most bytes *left*, not the longest
        ([(0, 1000, 800)], 100, None, [(0, 1000)]),  # 200 left: not above 2 * min_segment
        ([(0, 1000, 799)], 100, (899, 1000), [(0, 899)]),  # 201 left: split
        ([(0, 1000, 1000)], 100, None, [(0, 1000)]),  # done: nothing to split
    ],
)
def test_an_idle_connection_takes_half_of_the_piece_with_most_left(
    segments: list[tuple[int, int, int]], min_segment: int, stolen: tuple[int, int] | None, after: list[tuple[int, int]]
) -> None:
    """An idle connection takes the second half of the bytes left in the fullest in-flight piece,
    only if that leaves both halves above min_segment; no byte is in two pieces."""
    pieces = Pieces(connections=4, segment_size=10 * KiB, min_segment=min_segment)
    pieces.begin([(start, end) for start, end, _ in segments])
    for segment, (_, _, pos) in zip(pieces.segments, segments, strict=True):
        segment.pos = segment.reserved = pos
    while pieces.take() is not None:  # all in flight
        pass
    before = pieces.missing
    piece = pieces.steal()
    assert (None if piece is None else (piece.start, piece.end)) == stolen
    assert spans(pieces.segments[: len(after)]) == after  # the pieces split off come after the first ones
    assert pieces.missing == before  # the bytes moved, none lost or doubled


def test_a_split_never_cuts_below_a_write_in_progress() -> None:
    """A write reserved up to ``reserved`` keeps its bytes: the split is of what lies beyond."""
    pieces = Pieces(connections=2, segment_size=10 * KiB, min_segment=10)
    pieces.begin([(0, 1000)])
    (segment,) = pieces.segments
    pieces.take()
    segment.pos, segment.reserved = 100, 400  # 300 bytes being written
    piece = pieces.steal()
    assert piece is not None and (piece.start, piece.end) == (700, 1000) and segment.end == 700


def test_the_prefix_is_where_the_file_is_complete_from_byte_0() -> None:
    """The hash may read up to the lowest pos of an unfinished segment; all full: the size; none yet: the kept bytes."""
    pieces = Pieces(connections=2, segment_size=100, min_segment=10)
    assert pieces.prefix(500, [(0, 120), (200, 300)]) == 120
    assert pieces.prefix(500, [(50, 120)]) == 0
    pieces.begin([(120, 200), (300, 500)])
    pieces.cut_up()
    assert pieces.prefix(500, [(0, 120), (200, 300)]) == 120
    for segment in pieces.segments:
        segment.pos = segment.end or 0
    assert pieces.done and pieces.prefix(500, ()) == 500 and pieces.missing == 0
    assert sorted(pieces.written()) == [(120, 200), (300, 400), (400, 500)]


def test_an_unknown_size_is_one_range_until_the_answer_gives_its_end() -> None:
    """With the size unknown there is one open-ended range; once its end is known it is cut like any other."""
    pieces = Pieces(connections=3, segment_size=100, min_segment=10)
    pieces.begin(None)
    probe = pieces.take()
    assert probe is not None and probe.end is None and not pieces.done and pieces.steal() is None
    probe.end = 250
    pieces.cut_up()
    assert spans(pieces.segments) == [(0, 100), (100, 200), (200, 250)]
    assert spans(pieces.pending) == [(100, 200), (200, 250)]
    pieces.only(probe)
    assert pieces.segments == [probe] and pieces.take() is None

"""Choosing sessions and their files: the tutorial's pandas filters as one value with checked criteria.

A :class:`SessionSelection` is applied to the sessions view (:meth:`ecephys_dl.views.Views.sessions`).
Criteria that cannot match because they name something the table does not hold (an id, a session
type, a structure acronym, a sex other than M or F) raise :class:`~ecephys_dl.errors.UsageError`
saying what is known, rather than quietly selecting nothing. A :class:`FetchRequest` adds which
files of those sessions are wanted, and :func:`choose` turns it into session and probe ids. This
module does not import pandas (a selection by id is read with the csv module).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ecephys_dl.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from ecephys_dl.catalog import Catalog

__all__ = ["SEXES", "FetchRequest", "SessionSelection", "check_structures", "choose"]

SEXES = ("M", "F")


def check_structures(given: Iterable[str], known: Iterable[str]) -> None:
    """Raise :class:`UsageError` for acronyms not in ``known``, suggesting close ones.

    Acronyms are case-sensitive (``VISl`` is not ``VISL``), but a suggestion ignores case so a
    wrongly capitalised acronym is pointed at the right one.
    """
    vocabulary = sorted({k for k in known if isinstance(k, str)})
    unknown = [g for g in dict.fromkeys(given) if g not in vocabulary]
    if not unknown:
        return
    by_lower: dict[str, list[str]] = {}
    for acronym in vocabulary:
        by_lower.setdefault(acronym.lower(), []).append(acronym)
    suggestions: list[str] = []
    for name in unknown:
        for close in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6):
            suggestions.extend(a for a in by_lower[close] if a not in suggestions)
    noun = "structure" if len(unknown) == 1 else "structures"
    hint = f"did you mean {', '.join(suggestions)}?" if suggestions else f"recorded structures: {', '.join(vocabulary)}"
    raise UsageError(f"no session recorded {noun} {', '.join(unknown)}", hint=hint)


@dataclass(frozen=True)
class SessionSelection:
    """Sessions that meet every given criterion (AND); an empty selection keeps all sessions.

    - ``ids``: only these session ids (each must exist).
    - ``genotype``: ``full_genotype`` contains this text, ignoring case (``wt`` matches ``wt/wt``).
    - ``sex``: ``M`` or ``F``, either case.
    - ``session_type``: exactly this type (it must exist).
    - ``structures``: sessions that recorded all of these acronyms (each recorded somewhere).

    The tutorial's example, male Sst mice shown brain_observatory_1.1 with units in VISl, is
    ``SessionSelection(sex="M", genotype="Sst", session_type="brain_observatory_1.1", structures=("VISl",))``.
    """

    ids: tuple[int, ...] = ()
    genotype: str | None = None
    sex: str | None = None
    session_type: str | None = None
    structures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Checked on construction, so a bad value fails before any table is read.
        if self.sex is not None and self.sex.upper() not in SEXES:
            raise UsageError(f"unknown sex {self.sex!r}: choose one of {', '.join(SEXES)}")

    @property
    def is_empty(self) -> bool:
        """Whether no criterion is set (every session is selected)."""
        return not self.ids and self.ids_only

    @property
    def ids_only(self) -> bool:
        """Whether ids are the only criterion, if any: the session ids alone then decide."""
        return not (self.genotype or self.sex or self.session_type or self.structures)

    def id_flags(self, present: Sequence[int]) -> list[bool]:
        """Which of the sessions ``present`` the ids keep (all, when none are given).

        An id not among them is a UsageError naming it.
        """
        if not self.ids:
            return [True] * len(present)
        known = set(present)
        unknown = [i for i in dict.fromkeys(self.ids) if i not in known]
        if unknown:
            noun = "session" if len(unknown) == 1 else "sessions"
            raise UsageError(
                f"no {noun} {', '.join(str(i) for i in unknown)} in the sessions table",
                hint="list the sessions with `ecephys-dl sessions --format ids`",
            )
        wanted = set(self.ids)
        return [i in wanted for i in present]

    def apply(self, sessions: pd.DataFrame) -> pd.DataFrame:
        """The rows of the sessions view that meet every criterion, in the table's order."""
        keep = [True] * len(sessions)

        def narrow(flags: Iterable[bool]) -> None:
            for i, flag in enumerate(flags):
                keep[i] = keep[i] and bool(flag)

        if self.ids:
            narrow(self.id_flags(sessions.index.tolist()))
        if self.genotype:
            text = self.genotype.casefold()
            narrow(isinstance(g, str) and text in g.casefold() for g in sessions["full_genotype"].tolist())
        if self.sex is not None:
            sex = self.sex.upper()
            narrow(s == sex for s in sessions["sex"].tolist())
        if self.session_type is not None:
            types = sessions["session_type"].tolist()
            if self.session_type not in types:
                known = ", ".join(dict.fromkeys(t for t in types if isinstance(t, str)))
                raise UsageError(f"unknown session type {self.session_type!r} (known session types: {known})")
            narrow(t == self.session_type for t in types)
        if self.structures:
            recorded = sessions["ecephys_structure_acronyms"].tolist()
            check_structures(self.structures, (a for acronyms in recorded for a in acronyms))
            wanted_structures = set(self.structures)
            narrow(wanted_structures.issubset(acronyms) for acronyms in recorded)
        return sessions[keep]


@dataclass(frozen=True)
class FetchRequest:
    """What to fetch: the sessions a selection picks, and which of their files."""

    selection: SessionSelection
    all_sessions: bool = False
    with_lfp: bool = False
    lfp_only: bool = False
    probe_ids: tuple[int, ...] = ()

    @property
    def wants_lfp(self) -> bool:
        """Whether any LFP file is wanted (``--with-lfp``, ``--lfp-only`` or ``--probe``)."""
        return self.with_lfp or self.lfp_only or bool(self.probe_ids)


def _int_columns(path: Path, *names: str) -> list[tuple[int, ...]] | None:
    """The named columns of a metadata CSV as whole numbers, row by row, with the csv module.

    None when the file is anything but plain (a column missing or twice, a value not a whole
    number, the first column's values not unique): the caller then reads it with pandas, which
    gives the proper error or reading.
    """
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            if any(header.count(name) != 1 for name in names):
                return None
            at = [header.index(name) for name in names]
            rows = [tuple(int(row[i]) for i in at) for row in reader]
    except (OSError, ValueError, IndexError, StopIteration, csv.Error):
        return None
    return rows if len({row[0] for row in rows}) == len(rows) else None


def _choose_by_id(catalog: Catalog, request: FetchRequest) -> tuple[list[int], list[tuple[int, int]]] | None:
    """Session ids and (probe, session) pairs for a selection by id only, without pandas (which takes
    longer to import than a small fetch takes to plan); None when the tables need pandas."""
    if not request.selection.ids_only:
        return None
    sessions = _int_columns(catalog.layout.table("sessions"), "id")
    if sessions is None:
        return None
    present = [row[0] for row in sessions]
    probes: list[tuple[int, int]] = []
    if request.wants_lfp:
        rows = _int_columns(catalog.layout.table("probes"), "id", "ecephys_session_id")
        if rows is None:
            return None
        known = set(present)
        probes = [(p, s) for p, s in rows if s in known]  # the inner join of the probes view
    return present, probes


def choose(catalog: Catalog, request: FetchRequest) -> tuple[list[int], dict[int, list[int]]]:
    """The session ids, and the probe ids per session whose LFP files are wanted."""
    quick = _choose_by_id(catalog, request)
    if quick is not None:
        present, pairs = quick
        chosen = [i for i, keep in zip(present, request.selection.id_flags(present), strict=True) if keep]
        return chosen, _probes_for(request, chosen, pairs)
    views = catalog.views()
    chosen = [int(i) for i in request.selection.apply(views.sessions()).index]
    if request.wants_lfp:
        probes = views.probes()
        return chosen, _probes_for(request, chosen, [(int(p), int(s)) for p, s in zip(probes.index, probes["ecephys_session_id"], strict=True)])
    return chosen, {}


def _probes_for(request: FetchRequest, chosen: list[int], pairs: list[tuple[int, int]]) -> dict[int, list[int]]:
    """The probe ids per chosen session whose LFP files are wanted; ``pairs``: (probe, session), the probes view's rows."""
    probes_by_session: dict[int, list[int]] = {}
    if not request.wants_lfp:
        return probes_by_session
    wanted = set(chosen)
    session_of = dict(pairs)
    if request.probe_ids:
        unknown = [p for p in request.probe_ids if p not in session_of]
        if unknown:
            raise UsageError(f"unknown probe id(s): {', '.join(map(str, unknown))}", hint="ecephys-dl probes lists them")
        outside = [p for p in request.probe_ids if session_of[p] not in wanted]
        if outside:
            raise UsageError(f"probe(s) {', '.join(map(str, outside))} are not in the selected sessions")
    for probe_id, session_id in pairs:
        if session_id in wanted and (not request.probe_ids or probe_id in request.probe_ids):
            probes_by_session.setdefault(session_id, []).append(probe_id)
    return probes_by_session

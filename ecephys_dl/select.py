"""Choosing sessions: the tutorial's pandas filters as one value with checked criteria.

A :class:`SessionSelection` is applied to the sessions view (:meth:`ecephys_dl.views.Views.sessions`).
Criteria that cannot match because they name something the table does not hold (an id, a session
type, a structure acronym, a sex other than M or F) raise :class:`~ecephys_dl.errors.UsageError`
saying what is known, rather than quietly selecting nothing. This module does not import pandas.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ecephys_dl.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SEXES", "SessionSelection", "check_structures"]

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
            raise UsageError(f"unknown sex {self.sex!r}", hint=f"choose one of: {', '.join(SEXES)}")

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
                raise UsageError(f"unknown session type {self.session_type!r}", hint=f"known session types: {known}")
            narrow(t == self.session_type for t in types)
        if self.structures:
            recorded = sessions["ecephys_structure_acronyms"].tolist()
            check_structures(self.structures, (a for acronyms in recorded for a in acronyms))
            wanted_structures = set(self.structures)
            narrow(wanted_structures.issubset(acronyms) for acronyms in recorded)
        return sessions[keep]

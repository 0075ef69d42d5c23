"""Session selection on the sessions view: each criterion, their combination, and the errors.

The sessions view comes from CSVs written the way AllenSDK writes them; the expected selections
are computed with plain Python from the generated warehouse records.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ecephys_dl import tables
from ecephys_dl.errors import UsageError
from ecephys_dl.layout import CacheLayout, write_atomic
from ecephys_dl.replica.dataset import QUERIES, _query_all, generate_records
from ecephys_dl.select import SessionSelection
from ecephys_dl.views import Views

Record = dict[str, Any]
BO, FC = "brain_observatory_1.1", "functional_connectivity"
TUTORIAL = SessionSelection(sex="M", genotype="Sst", session_type=BO, structures=("VISl",))


@dataclass(frozen=True)
class Facts:
    """What the records say about each session, by session id."""

    sex: dict[int, str]
    genotype: dict[int, str]
    session_type: dict[int, str]
    structures: dict[int, set[str]]

    def ids(self, keep: Callable[[int], bool]) -> list[int]:
        return [s for s in sorted(self.sex) if keep(s)]


def _facts(records: dict[str, list[Record]]) -> Facts:
    specimens = {s["id"]: s for s in records["Specimen"]}
    donors = {d["id"]: d for d in records["Donor"]}
    structure = {s["id"]: s["acronym"] for s in records["Structure"]}
    probe_session = {p["id"]: p["ecephys_session_id"] for p in records["EcephysProbe"]}
    sex, genotype, session_type = {}, {}, {}
    for s in records["EcephysSession"]:
        donor = donors[specimens[s["specimen_id"]]["donor_id"]]
        sex[s["id"]], genotype[s["id"]], session_type[s["id"]] = donor["sex"], donor["full_genotype"] or "wt", s["stimulus_name"]
    structures: dict[int, set[str]] = {s: set() for s in sex}
    for c in records["EcephysChannel"]:
        if c["ecephys_structure_id"] is not None:
            structures[probe_session[c["ecephys_probe_id"]]].add(structure[c["ecephys_structure_id"]])
    return Facts(sex, genotype, session_type, structures)


def _sessions_view(records: dict[str, list[Record]], root: Path) -> pd.DataFrame:
    """Write the four metadata CSVs from the warehouse's answers, then read the sessions view."""
    layout = CacheLayout(root)
    frames = {"sessions": tables.sessions_frame, "probes": tables.probes_frame, "channels": tables.channels_frame, "units": tables.units_frame}
    for name, make in frames.items():
        write_atomic(layout.table(name), tables.csv_bytes(make(_query_all(QUERIES[name], records.__getitem__))))
    return Views.from_cache(root).sessions()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Facts]:
    """Six sessions: both types, both sexes, every genotype, wild types with and without a recorded genotype."""
    records = generate_records("small", seed=1)
    return _sessions_view(records, tmp_path_factory.mktemp("small")), _facts(records)


def test_an_empty_selection_keeps_every_session(small: tuple[pd.DataFrame, Facts]) -> None:
    """No criterion: the table comes back whole, in order."""
    sessions, _ = small
    assert SessionSelection().is_empty
    assert SessionSelection().apply(sessions).index.tolist() == sessions.index.tolist()
    assert not SessionSelection(genotype="wt").is_empty and not SessionSelection(ids=(1,)).is_empty


def test_the_fixture_covers_every_criterion(small: tuple[pd.DataFrame, Facts]) -> None:
    """Both sexes, both session types, "wt" and "wt/wt" genotypes: otherwise the tests below prove little."""
    _, facts = small
    assert set(facts.sex.values()) == {"M", "F"}
    assert set(facts.session_type.values()) == {BO, FC}
    assert {"wt", "wt/wt"} <= set(facts.genotype.values())


@pytest.mark.parametrize("text", ["wt", "WT", "sst", "Vip-IRES", "ai32", "pvalb-ires-cre/WT"])
def test_genotype_is_a_case_insensitive_substring(small: tuple[pd.DataFrame, Facts], text: str) -> None:
    """--genotype keeps sessions whose full_genotype contains the text in any case ("wt" matches "wt" and "wt/wt")."""
    sessions, facts = small
    expected = facts.ids(lambda s: text.lower() in facts.genotype[s].lower())
    assert expected
    assert SessionSelection(genotype=text).apply(sessions).index.tolist() == expected


@pytest.mark.parametrize("sex", ["M", "F", "m", "f"])
def test_sex_in_either_case(small: tuple[pd.DataFrame, Facts], sex: str) -> None:
    """--sex M/F in either case keeps the sessions of that sex."""
    sessions, facts = small
    expected = facts.ids(lambda s: facts.sex[s] == sex.upper())
    assert expected
    assert SessionSelection(sex=sex).apply(sessions).index.tolist() == expected


@pytest.mark.parametrize("sex", ["X", "male", ""])
def test_an_unknown_sex_names_the_choices(sex: str) -> None:
    """Anything but M or F is a usage error naming M and F, before any table is read."""
    with pytest.raises(UsageError) as caught:
        SessionSelection(sex=sex)
    assert "M" in str(caught.value) and "F" in str(caught.value)


@pytest.mark.parametrize("session_type", [BO, FC])
def test_session_type_is_exact(small: tuple[pd.DataFrame, Facts], session_type: str) -> None:
    """--session-type keeps exactly the sessions of that type."""
    sessions, facts = small
    assert SessionSelection(session_type=session_type).apply(sessions).index.tolist() == facts.ids(lambda s: facts.session_type[s] == session_type)


def test_an_unknown_session_type_names_the_known_ones(small: tuple[pd.DataFrame, Facts]) -> None:
    """A type not in the table (even a near miss) is a usage error listing the table's types."""
    sessions, _ = small
    with pytest.raises(UsageError) as caught:
        SessionSelection(session_type="Brain_Observatory_1.1").apply(sessions)
    assert BO in str(caught.value) and FC in str(caught.value)


def test_structures_must_all_be_recorded(small: tuple[pd.DataFrame, Facts]) -> None:
    """--structure A --structure B keeps sessions that recorded both A and B."""
    sessions, facts = small
    for wanted in (("VISl",), ("VISl", "CA3"), ("VISp", "VISam", "DG")):
        expected = facts.ids(lambda s, w=wanted: set(w) <= facts.structures[s])  # type: ignore[misc]
        assert expected
        assert SessionSelection(structures=wanted).apply(sessions).index.tolist() == expected
    # A second structure can only narrow the selection; here it does.
    narrower = SessionSelection(structures=("CA2", "CA3")).apply(sessions).index
    assert narrower.tolist() == facts.ids(lambda s: {"CA2", "CA3"} <= facts.structures[s])
    assert set(narrower) < set(SessionSelection(structures=("CA3",)).apply(sessions).index)


@pytest.mark.parametrize(("typo", "suggested"), [("visl", "VISl"), ("VISL", "VISl"), ("VIsp", "VISp"), ("CA", "CA1")])
def test_an_unknown_structure_suggests_close_acronyms(small: tuple[pd.DataFrame, Facts], typo: str, suggested: str) -> None:
    """Acronyms are case-sensitive; one recorded nowhere is a usage error suggesting close ones."""
    sessions, _ = small
    with pytest.raises(UsageError) as caught:
        SessionSelection(structures=("VISp", typo)).apply(sessions)
    assert typo in caught.value.message and "VISp" not in caught.value.message
    assert caught.value.hint is not None and caught.value.hint.startswith("did you mean")
    suggestions = caught.value.hint.removeprefix("did you mean ").rstrip("?").split(", ")
    assert suggested in suggestions
    if typo.lower() == suggested.lower():
        assert suggestions[0] == suggested  # a wrong case is the closest match


def test_ids_keep_those_sessions(small: tuple[pd.DataFrame, Facts]) -> None:
    """--id keeps the given sessions, in the table's order."""
    sessions, facts = small
    chosen = sorted(facts.sex)[::2]
    assert SessionSelection(ids=tuple(reversed(chosen))).apply(sessions).index.tolist() == chosen


def test_unknown_ids_are_named(small: tuple[pd.DataFrame, Facts]) -> None:
    """Ids not in the table are a usage error naming each of them (and not the known ones)."""
    sessions, facts = small
    known = sorted(facts.sex)[0]
    with pytest.raises(UsageError) as caught:
        SessionSelection(ids=(known, 123, 456)).apply(sessions)
    message = str(caught.value).splitlines()[0]
    assert "123" in message and "456" in message and str(known) not in message
    assert caught.value.exit_code == 2


def test_criteria_combine_with_and(small: tuple[pd.DataFrame, Facts]) -> None:
    """Every given criterion must hold; the tutorial's example is one such combination."""
    sessions, facts = small
    combos: list[tuple[SessionSelection, Callable[[int], bool]]] = [
        (SessionSelection(sex="M", genotype="wt"), lambda s: facts.sex[s] == "M" and "wt" in facts.genotype[s]),
        (SessionSelection(session_type=FC, sex="F"), lambda s: facts.session_type[s] == FC and facts.sex[s] == "F"),
        (SessionSelection(ids=tuple(facts.sex), session_type=BO, structures=("VISp",)), lambda s: facts.session_type[s] == BO and "VISp" in facts.structures[s]),
        (TUTORIAL, lambda s: facts.sex[s] == "M" and "Sst" in facts.genotype[s] and facts.session_type[s] == BO and "VISl" in facts.structures[s]),
    ]
    for selection, keep in combos:
        expected = facts.ids(keep)
        assert expected, selection
        assert selection.apply(sessions).index.tolist() == expected
    assert SessionSelection(sex="F", genotype="Sst").apply(sessions).empty == (not facts.ids(lambda s: facts.sex[s] == "F" and "Sst" in facts.genotype[s]))


def test_the_tutorial_example(small: tuple[pd.DataFrame, Facts]) -> None:
    """Male, Sst, brain_observatory_1.1, VISl: the tutorial's sessions that the dataset holds, and only matches."""
    sessions, facts = small
    found = TUTORIAL.apply(sessions)
    expected = facts.ids(lambda s: facts.sex[s] == "M" and "Sst" in facts.genotype[s] and facts.session_type[s] == BO and "VISl" in facts.structures[s])
    assert found.index.tolist() == expected
    # Two of the three sessions the tutorial shows are among the six generated here.
    assert {715093703, 719161530} <= set(expected)
    assert list(found.columns) == list(sessions.columns)


def test_importing_select_does_not_import_pandas() -> None:
    """``ecephys_dl.select`` stays light: pandas is imported by whoever builds the table."""
    import subprocess

    code = "import sys, ecephys_dl.select; print('pandas' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

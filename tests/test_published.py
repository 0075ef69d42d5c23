"""The published sizes and digests of the release: the shipped table, its parser and its writer."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from ecephys_dl.errors import CacheError, PublishedTableError
from ecephys_dl.published import COLUMNS, SHIPPED, PublishedKind, PublishedTable, load_published, write_published

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "published_files.csv"
SHIPPED_BYTES = resources.files("ecephys_dl").joinpath("data").joinpath("published_files.csv").read_bytes()
HEADER = ",".join(COLUMNS)

SESSION = "session_715093703/session_715093703.nwb"
LFP = "session_715093703/probe_810755797_lfp.nwb"


def _row(cache_path: str) -> dict[str, str]:
    """The shipped table's row for ``cache_path``, as text fields."""
    for line in SHIPPED_BYTES.decode().split("\r\n"):
        fields = line.split(",")
        if len(fields) == len(COLUMNS) and fields[3] == cache_path:
            return dict(zip(COLUMNS, fields, strict=True))
    raise AssertionError(f"{cache_path} is not in the shipped table")


def _write_csv(path: Path, *rows: dict[str, str] | str, header: str = HEADER) -> Path:
    lines = [header] + [row if isinstance(row, str) else ",".join(row[c] for c in COLUMNS) for row in rows]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


# -- the shipped table --------------------------------------------------------------------------


def test_the_shipped_table_is_the_reference_byte_for_byte() -> None:
    """ecephys_dl/data/published_files.csv is a copy of the reference table, never edited by hand."""
    if not REFERENCE.exists():
        pytest.skip(f"the reference table {REFERENCE} is not on this machine")
    assert REFERENCE.read_bytes() == SHIPPED_BYTES


def test_the_shipped_table_holds_every_nwb_file_of_the_release() -> None:
    """383 files: 58 session files and 325 LFP files, with the published totals."""
    table = load_published()
    assert table.source == SHIPPED
    assert len(table) == 383 == len(list(table))
    sessions = [f for f in table if f.kind is PublishedKind.SESSION]
    lfps = [f for f in table if f.kind is PublishedKind.LFP]
    assert (len(sessions), len(lfps)) == (58, 325)
    assert sum(f.size for f in sessions) == 144_965_967_784
    assert sum(f.size for f in lfps) == 707_553_216_911
    assert len({f.session_id for f in sessions}) == 58
    assert {f.session_id for f in lfps} <= {f.session_id for f in sessions}
    assert {f.dandiset for f in table} == {"000021", "000022"}


def test_the_warehouse_lfp_sizes_agree() -> None:
    """The two LFP sizes the warehouse is known to report (in MiB) are the published ones."""
    table = load_published()
    sizes = {f.probe_id: round(f.size / 2**20, 3) for f in table if f.probe_id in (810755797, 810755805)}
    assert sizes == {810755797: 1967.383, 810755805: 2345.194}


def test_the_two_small_lfp_files_of_session_719161530() -> None:
    """Probes 729445654 and 729445656 of session 719161530 are about 72 MB, and the only files under 100 MB."""
    small = sorted((f.session_id, f.probe_id, f.size) for f in load_published() if f.size < 100_000_000)
    assert small == [(719161530, 729445654, 71_781_159), (719161530, 729445656, 72_289_252)]


def test_lookup_by_cache_path() -> None:
    table = load_published()
    session = table.by_path(SESSION)
    assert session is not None
    assert (session.kind, session.session_id, session.probe_id, session.size) == (PublishedKind.SESSION, 715093703, None, 2_856_232_912)
    assert session.sha256 == "8bf172c54eba23835c3780ff91463177d959badb87034a784f024bceb429406a"
    assert session.dandi_path == "sub-699733573/sub-699733573_ses-715093703.nwb"
    lfp = table.by_path(LFP)
    assert lfp is not None and (lfp.kind, lfp.probe_id, lfp.size) == (PublishedKind.LFP, 810755797, 2_062_950_784)
    # Not files of the release: an unknown session, a metrics CSV, the manifest, a partial, a bad spelling.
    for other in ("session_1/session_1.nwb", "session_715093703/session_715093703_analysis_metrics.csv", "manifest.json", SESSION + ".part", "./" + SESSION):
        assert table.by_path(other) is None


def test_reference_label_names_the_dandiset() -> None:
    table = load_published()
    by_dandiset = {f.dandiset: f for f in table}
    assert table.reference_label(by_dandiset["000021"]) == "published:000021"
    assert table.reference_label(by_dandiset["000022"]) == "published:000022"


def test_reference_label_refuses_a_file_not_of_the_table() -> None:
    """A file whose facts differ from the table's is not labelled as checked against it."""
    table = load_published()
    shipped = table.by_path(SESSION)
    assert shipped is not None
    changed = dataclasses.replace(shipped, sha256="0" * 64)
    with pytest.raises(ValueError, match="not a file of this table"):
        table.reference_label(changed)


def test_tables_are_read_once_per_path(tmp_path: Path) -> None:
    assert load_published() is load_published()
    path = _write_csv(tmp_path / "lab.csv", _row(SESSION), _row(LFP))
    table = load_published(path)
    assert load_published(Path(str(path))) is table
    assert table.source == str(path)
    assert [f.cache_path for f in table] == [SESSION, LFP]


def test_importing_and_loading_does_not_import_pandas() -> None:
    """The table is read with the csv module, so commands that only need it start fast."""
    code = "import sys, ecephys_dl.published as p; p.load_published(); print(sorted(m for m in ('pandas', 'h5py') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


# -- the parser ---------------------------------------------------------------------------------

Edit = Callable[[dict[str, str]], None]


def _set(**values: str) -> Edit:
    return lambda row: row.update(values)


MALFORMED: list[tuple[str, Edit, str]] = [
    # kind
    ("session", _set(kind="probe"), "kind 'probe' is neither"),  # an unknown kind
    ("session", _set(kind="Session"), "kind 'Session' is neither"),  # kinds are lowercase
    ("lfp", _set(cache_path=SESSION), "kind 'lfp' disagrees with cache_path"),  # an LFP row at a session file's path
    ("session", _set(cache_path="session_715093703/probe_810755797_lfp.nwb"), "kind 'session' disagrees"),  # a session row at an LFP path
    ("session", _set(probe_id="810755797"), "a session file has no probe_id"),  # a probe id on a session row
    ("lfp", _set(probe_id=""), "an LFP file needs a positive integer probe_id"),  # an LFP row without its probe
    # ids
    ("session", _set(session_id="0715093703"), "session_id '0715093703' is not a positive integer id"),  # a leading zero
    ("session", _set(session_id="0"), "session_id '0' is not"),  # zero
    ("session", _set(session_id="-715093703"), "session_id '-715093703' is not"),  # negative
    ("session", _set(session_id=" 715093703"), "session_id ' 715093703' is not"),  # padded
    ("session", _set(session_id="715093703.0"), "session_id '715093703.0' is not"),  # a float
    ("session", _set(session_id="٧١٥٠٩٣٧٠٣"), "session_id '٧١٥٠٩٣٧٠٣' is not"),  # digits, but not ASCII ones
    ("lfp", _set(probe_id="0810755797"), "probe_id '0810755797' is not"),  # a probe id with a leading zero
    ("lfp", _set(probe_id="probe"), "probe_id 'probe' is not"),  # a probe id that is no number
    # size
    ("session", _set(size="0"), "size '0' is not a positive integer"),  # empty files are not published
    ("session", _set(size="-2856232912"), "size '-2856232912' is not"),  # negative
    ("session", _set(size="02856232912"), "size '02856232912' is not"),  # a leading zero
    ("session", _set(size="2.8e9"), "size '2.8e9' is not"),  # a float
    ("session", _set(size="+2856232912"), "size '+2856232912' is not"),  # a sign
    ("session", _set(size=""), "size '' is not"),  # missing
    # sha256
    ("session", _set(sha256="8BF172C54EBA23835C3780FF91463177D959BADB87034A784F024BCEB429406A"), "is not 64 lowercase hex characters"),  # uppercase
    ("session", _set(sha256="8bf172c54eba23835c3780ff91463177d959badb87034a784f024bceb429406"), "is not 64 lowercase hex"),  # 63 characters
    ("session", _set(sha256="8bf172c54eba23835c3780ff91463177d959badb87034a784f024bceb429406a0"), "is not 64 lowercase hex"),  # 65 characters
    ("session", _set(sha256="gbf172c54eba23835c3780ff91463177d959badb87034a784f024bceb429406a"), "is not 64 lowercase hex"),  # not hex
    ("session", _set(sha256=""), "sha256 '' is not 64"),  # missing
    # cache_path
    ("session", _set(cache_path="session_1/session_1.nwb"), "is not 'session_715093703/session_715093703.nwb'"),  # another session's file
    ("lfp", _set(cache_path="session_715093703/probe_1_lfp.nwb"), "is not 'session_715093703/probe_810755797_lfp.nwb'"),  # another probe's file
    ("lfp", _set(cache_path="session_1/probe_810755797_lfp.nwb"), "is not 'session_715093703/probe_810755797_lfp.nwb'"),  # the probe under another session
    ("session", _set(cache_path="session_715093703/session_715093704.nwb"), "is not a session or LFP file"),  # folder and name disagree
    ("session", _set(cache_path="./" + SESSION), "is not a session or LFP file"),  # not in the tree's spelling
    ("session", _set(cache_path="/" + SESSION), "is not a session or LFP file"),  # absolute
    ("session", _set(cache_path=SESSION.replace("/", "\\")), "is not a session or LFP file"),  # backslashes
    ("session", _set(cache_path=SESSION + ".part"), "is not a session or LFP file"),  # a partial download
    ("session", _set(cache_path="session_715093703/session_715093703_analysis_metrics.csv"), "is not a session or LFP file"),  # a cache file, but no NWB file
    # where the file is on DANDI
    ("session", _set(dandi_etag="ce0058d591aa3806f100287f3c65174e"), "dandi_etag"),  # no part count
    ("session", _set(dandiset="21"), "dandiset '21' is not a six-digit"),  # not zero-padded
    ("session", _set(dandi_asset_id="58703C97-C0A9-4736-B684-73C85C1A444A"), "dandi_asset_id"),  # uppercase UUID
    ("session", _set(dandi_path="sub-699733573/sub-699733573_ses-715093704.nwb"), "dandi_path"),  # another session
    ("lfp", _set(dandi_path="sub-699733573/sub-699733573_ses-715093703.nwb"), "dandi_path"),  # an LFP row at the session file
]


@pytest.mark.parametrize(("base", "edit", "problem"), MALFORMED, ids=[f"{i}-{case[2][:24]}" for i, case in enumerate(MALFORMED)])
def test_a_malformed_row_is_refused_naming_the_file_and_the_row(tmp_path: Path, base: str, edit: Edit, problem: str) -> None:
    row = _row(SESSION if base == "session" else LFP)
    edit(row)
    good = _row("session_719161530/session_719161530.nwb")
    path = _write_csv(tmp_path / "lab.csv", good, row)
    with pytest.raises(PublishedTableError) as caught:
        load_published(path)
    message = str(caught.value)
    assert message.startswith(f"{path}, row 2 (line 3): ")
    assert problem in message
    assert "\n" not in message and "\r" not in message
    assert isinstance(caught.value, CacheError) and caught.value.hint


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (",".join(_row(SESSION)[c] for c in COLUMNS[:-1]), "9 fields, not 10"),  # a field short
        (",".join(_row(SESSION)[c] for c in COLUMNS) + ",x", "11 fields, not 10"),  # a field too many
        ("", "0 fields, not 10"),  # an empty line inside the table
    ],
)
def test_a_row_with_the_wrong_number_of_fields_is_refused(tmp_path: Path, line: str, problem: str) -> None:
    path = _write_csv(tmp_path / "lab.csv", _row(LFP), line)
    with pytest.raises(PublishedTableError, match=r", row 2 \(line 3\): " + problem):
        load_published(path)


def test_a_path_twice_is_refused(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "lab.csv", _row(SESSION), _row(LFP), _row(SESSION))
    with pytest.raises(PublishedTableError, match=rf"row 3 \(line 4\): cache_path '{re.escape(SESSION)}' is already in row 1$"):
        load_published(path)


@pytest.mark.parametrize(
    "header",
    [
        HEADER.replace(",dandi_path", ""),  # a column missing
        HEADER.replace("size,sha256", "sha256,size"),  # columns reordered
        HEADER.upper(),  # another spelling
        "\ufeff" + HEADER,  # a byte-order mark
        HEADER + ",extra",  # a column more
    ],
)
def test_a_wrong_header_is_refused(tmp_path: Path, header: str) -> None:
    path = _write_csv(tmp_path / "lab.csv", _row(SESSION), header=header)
    with pytest.raises(PublishedTableError, match=rf"^{re.escape(str(path))}, line 1: the header is .*, not '{HEADER}'$"):
        load_published(path)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "line 1: the header is missing"),  # an empty file
        (HEADER.encode() + b"\r\n", "no rows after the header"),  # a header alone
        (HEADER.encode() + b"\r\nsession,\xff\r\n", "not UTF-8 text"),  # not text
        (HEADER.encode() + b'\r\n"session"x,1\r\n', "line 2: not a well-formed CSV line"),  # broken quoting
    ],
)
def test_a_table_that_is_no_table_is_refused(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "lab.csv"
    path.write_bytes(data)
    with pytest.raises(PublishedTableError, match=problem):
        load_published(path)


def test_a_missing_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PublishedTableError, match=r"missing\.csv cannot be read"):
        load_published(tmp_path / "missing.csv")


@pytest.mark.parametrize(
    "changes",
    [
        {"session_id": True},  # a bool is no id
        {"size": 0},  # nor is an empty file published
        {"kind": "session"},  # the kind is the enum, not its text
        {"probe_id": 810755797},  # a session file has no probe
    ],
)
def test_a_published_file_checks_itself(changes: dict[str, object]) -> None:
    """Built in code, a PublishedFile follows the same rules the parser applies."""
    shipped = load_published().by_path(SESSION)
    assert shipped is not None
    with pytest.raises(ValueError):
        dataclasses.replace(shipped, **changes)  # type: ignore[arg-type]


# -- the writer ---------------------------------------------------------------------------------


def test_the_shipped_table_round_trips_byte_for_byte(tmp_path: Path) -> None:
    table = load_published()
    path = tmp_path / "refreshed" / "published_files.csv"
    write_published(path, table)
    assert path.read_bytes() == SHIPPED_BYTES
    again = load_published(path)
    assert again.files == table.files and again.source == str(path)
    assert not [p.name for p in path.parent.iterdir() if p.name != path.name]  # no temporary left


def test_writing_a_table_replaces_what_was_read_from_that_path(tmp_path: Path) -> None:
    path = tmp_path / "lab.csv"
    table = load_published()
    write_published(path, list(table)[:2])
    assert [f.cache_path for f in load_published(path)] == [f.cache_path for f in list(table)[:2]]
    write_published(path, list(table)[5:6])
    assert load_published(path).files == (list(table)[5],)
    assert path.read_bytes().decode().split("\r\n")[0] == HEADER


def test_the_writer_refuses_what_the_reader_would(tmp_path: Path) -> None:
    shipped = load_published().by_path(SESSION)
    assert shipped is not None
    with pytest.raises(ValueError, match="twice"):
        write_published(tmp_path / "twice.csv", [shipped, shipped])
    with pytest.raises(ValueError, match="at least one file"):
        write_published(tmp_path / "empty.csv", [])
    assert not list(tmp_path.iterdir())


def test_a_table_is_built_from_published_files_only() -> None:
    with pytest.raises(TypeError):
        PublishedTable(("session_1/session_1.nwb",))  # type: ignore[arg-type]

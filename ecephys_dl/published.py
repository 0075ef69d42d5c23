"""The published facts of the release: the size and SHA-256 the DANDI archive gives each NWB file.

The Visual Coding – Neuropixels release is published on DANDI as dandisets 000021
(brain_observatory_1.1) and 000022 (functional_connectivity). For each of its 383 NWB files (58
session files, 325 probe LFP files) the archive publishes the size and a SHA-256 it computed from
the bytes it stores. ecephys-dl ships that table (``ecephys_dl/data/published_files.csv``), so
it is known offline what each file of the cache must be. One row per file, with the columns of
:data:`COLUMNS`:

- ``kind``: ``session`` or ``lfp``; ``session_id``, ``probe_id``: the AllenSDK ids (``probe_id``
  empty for a session file); ``cache_path``: the file's place in the AllenSDK cache tree;
- ``size`` (bytes), ``sha256`` (``dandi:sha2-256``), ``dandi_etag`` (``dandi:dandi-etag``: the
  md5 of the 64 MiB part md5s, ``-<parts>``);
- ``dandiset``, ``dandi_asset_id``, ``dandi_path``: where the file is on DANDI.

:func:`load_published` reads the shipped table, or one in the same format (a lab's refreshed
copy, the replica's own), strictly: anything malformed is a :class:`PublishedTableError` naming
the file and the row. :func:`write_published` writes one, so a table read and written again is
the same bytes.
"""

from __future__ import annotations

import csv
import enum
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ecephys_dl.errors import PublishedTableError
from ecephys_dl.layout import ID_PATTERN, CachePath, FileKind, classify, nwb_relative, session_id_of_dir, write_atomic

__all__ = [
    "COLUMNS",
    "PUBLISHED_PREFIX",
    "SHIPPED",
    "DandiName",
    "PublishedFile",
    "PublishedKind",
    "PublishedTable",
    "load_published",
    "published_csv",
    "read_dandi_path",
    "write_published",
]

COLUMNS = ("kind", "session_id", "probe_id", "cache_path", "size", "sha256", "dandi_etag", "dandiset", "dandi_asset_id", "dandi_path")
SHIPPED = "shipped"  # the source of the table that comes with the package
_SHIPPED_NAME = "the shipped table ecephys_dl/data/published_files.csv"
_LINE_END = "\r\n"  # the published table's line ends (the csv module's own)

_SIZE = re.compile(r"[1-9][0-9]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ETAG = re.compile(r"[0-9a-f]{32}-[1-9][0-9]*")
_DANDISET = re.compile(r"[0-9]{6}")
_ASSET_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# sub-<specimen>/sub-<specimen>_ses-<session>[_probe-<probe>_ecephys].nwb
_DANDI_PATH = re.compile(rf"sub-({ID_PATTERN})/sub-({ID_PATTERN})_ses-({ID_PATTERN})(?:_probe-({ID_PATTERN})_ecephys)?\.nwb")
PUBLISHED_PREFIX = "published:"  # a check against a published file is against published:<dandiset>


class PublishedKind(enum.StrEnum):
    """Which of the release's two kinds of NWB file a row is."""

    SESSION = "session"  # session_<S>/session_<S>.nwb
    LFP = "lfp"  # session_<S>/probe_<P>_lfp.nwb


_CACHE_KINDS = {PublishedKind.SESSION: FileKind.SESSION_NWB, PublishedKind.LFP: FileKind.LFP_NWB}


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class PublishedFile:
    """One NWB file of the release as DANDI publishes it. A value that breaks the table's rules
    (see the module docstring) is refused with a ``ValueError`` saying which."""

    kind: PublishedKind
    session_id: int
    probe_id: int | None
    cache_path: str
    size: int
    sha256: str
    dandi_etag: str
    dandiset: str
    dandi_asset_id: str
    dandi_path: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, PublishedKind):
            raise ValueError(f"kind {self.kind!r} is neither 'session' nor 'lfp'")
        if not _is_id(self.session_id):
            raise ValueError(f"session_id {self.session_id!r} is not a positive integer")
        if self.kind is PublishedKind.SESSION and self.probe_id is not None:
            raise ValueError(f"a session file has no probe_id, this one has {self.probe_id!r}")
        if self.kind is PublishedKind.LFP and not _is_id(self.probe_id):
            raise ValueError(f"an LFP file needs a positive integer probe_id, not {self.probe_id!r}")
        self._check_cache_path()
        if not _is_id(self.size):
            raise ValueError(f"size {self.size!r} is not a positive integer")
        _check_text("sha256", self.sha256, _SHA256, "64 lowercase hex characters")
        _check_text("dandi_etag", self.dandi_etag, _ETAG, "32 lowercase hex characters, '-' and a part count")
        _check_text("dandiset", self.dandiset, _DANDISET, "a six-digit dandiset id")
        _check_text("dandi_asset_id", self.dandi_asset_id, _ASSET_ID, "a lowercase UUID")
        self._check_dandi_path()

    @property
    def expected_cache_path(self) -> str:
        """Where the AllenSDK cache keeps this file, from the row's ids."""
        return nwb_relative(self.session_id, self.probe_id)

    def _check_cache_path(self) -> None:
        found = classify(self.cache_path) if isinstance(self.cache_path, str) else None
        if found is None or found.kind not in _CACHE_KINDS.values():
            raise ValueError(f"cache_path {self.cache_path!r} is not a session or LFP file of the cache tree")
        if found.kind is not _CACHE_KINDS[self.kind]:
            other = "an LFP" if found.kind is FileKind.LFP_NWB else "a session"
            raise ValueError(f"kind {self.kind.value!r} disagrees with cache_path {self.cache_path!r}, {other} file")
        if found != CachePath(found.kind, session_id=self.session_id, probe_id=self.probe_id):
            raise ValueError(f"cache_path {self.cache_path!r} is not {self.expected_cache_path!r}, the path of this row's ids")

    @property
    def reference(self) -> str:
        """What a check against this file says it was checked against: ``published:<dandiset>``."""
        return f"{PUBLISHED_PREFIX}{self.dandiset}"

    def is_bytes(self, size: int, sha256: str) -> bool:
        """Whether bytes of this size and SHA-256 are this published file."""
        return size == self.size and sha256 == self.sha256

    def _check_dandi_path(self) -> None:
        name = read_dandi_path(self.dandi_path)
        if name is None or name.specimen != name.named_specimen or name.session_id != self.session_id or name.probe_id != self.probe_id:
            shape = "sub-<specimen>/sub-<specimen>_ses-{s}" + ("" if self.probe_id is None else "_probe-{p}_ecephys") + ".nwb"
            raise ValueError(f"dandi_path {self.dandi_path!r} is not {shape.format(s=self.session_id, p=self.probe_id)!r}")


@dataclass(frozen=True)
class DandiName:
    """The ids in a DANDI path of the release: ``sub-<specimen>/sub-<named_specimen>_ses-<session>[_probe-<probe>_ecephys].nwb``
    (in a path of the release both specimens are the same)."""

    specimen: int
    named_specimen: int
    session_id: int
    probe_id: int | None


def read_dandi_path(path: object) -> DandiName | None:
    """The ids of a path of the DANDI form (ids in ASCII digits, no leading zero), or None for any other."""
    match = _DANDI_PATH.fullmatch(path) if isinstance(path, str) else None
    if match is None:
        return None
    specimen, named, session, probe = match.groups()
    return DandiName(int(specimen), int(named), int(session), None if probe is None else int(probe))


def _check_text(column: str, value: object, pattern: re.Pattern[str], shape: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{column} {value!r} is not {shape}")


@dataclass(frozen=True)
class PublishedTable:
    """The published files of a release, in the table's order, looked up by cache path.

    ``source`` says which table it is: :data:`SHIPPED`, or the path it was read from.
    """

    files: tuple[PublishedFile, ...]
    source: str = SHIPPED
    _by_path: dict[str, PublishedFile] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, PublishedFile] = {}
        for file in self.files:
            if not isinstance(file, PublishedFile):
                raise TypeError(f"not a PublishedFile: {file!r}")
            if file.cache_path in index:
                raise ValueError(f"cache_path {file.cache_path!r} is in the table twice")
            index[file.cache_path] = file
        if not index:
            raise ValueError("a published table holds at least one file")
        object.__setattr__(self, "_by_path", index)

    def __iter__(self) -> Iterator[PublishedFile]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def by_path(self, cache_path: str) -> PublishedFile | None:
        """The published file at ``cache_path`` (relative, forward slashes), or None if the release has none there."""
        return self._by_path.get(cache_path)

    def reference_label(self, file: PublishedFile) -> str:
        """What a check against this table says it was checked against: ``published:<dandiset>``."""
        if self._by_path.get(file.cache_path) != file:
            raise ValueError(f"{file.cache_path} as given is not a file of this table ({self.source})")
        return file.reference


_CACHE: dict[Path | None, PublishedTable] = {}


def load_published(path: Path | None = None) -> PublishedTable:
    """The shipped table of published files, or (``path``) one read from a CSV in the same format.

    Each table is read once per process and path; a malformed one raises
    :class:`~ecephys_dl.errors.PublishedTableError` naming the file and the row.
    """
    key = None if path is None else Path(path)
    table = _CACHE.get(key)
    if table is None:
        table = _CACHE[key] = _read_shipped() if key is None else _read_file(key)
    return table


def _read_shipped() -> PublishedTable:
    hint = "the installed package is damaged: reinstall ecephys-dl"
    try:
        data = resources.files("ecephys_dl").joinpath("data").joinpath("published_files.csv").read_bytes()
    except OSError as exc:
        raise PublishedTableError(f"{_SHIPPED_NAME} cannot be read: {exc}", hint=hint) from exc
    return _parse(data, name=_SHIPPED_NAME, source=SHIPPED, hint=hint)


def _read_file(path: Path) -> PublishedTable:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PublishedTableError(f"{path} cannot be read: {exc.strerror or exc}", hint="give the path of a published-files table") from exc
    return _parse(data, name=str(path), source=str(path), hint="correct the row, or take a fresh copy of the table")


def _parse(data: bytes, *, name: str, source: str, hint: str) -> PublishedTable:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PublishedTableError(f"{name}: not UTF-8 text (byte {exc.start})", hint=hint) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    files: list[PublishedFile] = []
    rows_of: dict[str, int] = {}
    try:
        header = next(reader, None)
        if header != list(COLUMNS):
            found = "missing" if header is None else repr(",".join(header))
            raise PublishedTableError(f"{name}, line 1: the header is {found}, not {','.join(COLUMNS)!r}", hint=hint)
        for row, fields in enumerate(reader, start=1):
            where = f"{name}, row {row} (line {reader.line_num})"
            try:
                file = _from_fields(fields)
            except ValueError as exc:
                raise PublishedTableError(f"{where}: {exc}", hint=hint) from None
            if file.cache_path in rows_of:
                raise PublishedTableError(f"{where}: cache_path {file.cache_path!r} is already in row {rows_of[file.cache_path]}", hint=hint)
            rows_of[file.cache_path] = row
            files.append(file)
    except csv.Error as exc:
        raise PublishedTableError(f"{name}, line {reader.line_num}: not a well-formed CSV line ({exc})", hint=hint) from None
    if not files:
        raise PublishedTableError(f"{name}: no rows after the header", hint=hint)
    return PublishedTable(tuple(files), source=source)


def _from_fields(fields: Sequence[str]) -> PublishedFile:
    if len(fields) != len(COLUMNS):
        raise ValueError(f"{len(fields)} fields, not {len(COLUMNS)}")
    kind, session_id, probe_id, cache_path, size, sha256, dandi_etag, dandiset, dandi_asset_id, dandi_path = fields
    try:
        published_kind = PublishedKind(kind)
    except ValueError:
        raise ValueError(f"kind {kind!r} is neither 'session' nor 'lfp'") from None
    if not _SIZE.fullmatch(size):
        raise ValueError(f"size {size!r} is not a positive integer")
    return PublishedFile(
        kind=published_kind,
        session_id=_parse_id("session_id", session_id),
        probe_id=None if probe_id == "" else _parse_id("probe_id", probe_id),
        cache_path=cache_path,
        size=int(size),
        sha256=sha256,
        dandi_etag=dandi_etag,
        dandiset=dandiset,
        dandi_asset_id=dandi_asset_id,
        dandi_path=dandi_path,
    )


def _parse_id(column: str, text: str) -> int:
    # An id as the cache tree writes it: ASCII digits, no leading zero, fits an int64.
    value = session_id_of_dir(f"session_{text}")
    if value is None:
        raise ValueError(f"{column} {text!r} is not a positive integer id (digits, no leading zero)")
    return value


def _to_fields(file: PublishedFile) -> list[str]:
    probe = "" if file.probe_id is None else str(file.probe_id)
    return [file.kind.value, str(file.session_id), probe, file.cache_path, str(file.size), file.sha256, file.dandi_etag, file.dandiset, file.dandi_asset_id, file.dandi_path]


def write_published(path: Path, files: Iterable[PublishedFile]) -> None:
    """Write ``files`` as a published table at ``path``, atomically, in the shipped table's format
    (header, CRLF line ends): a table read with :func:`load_published` writes back byte for byte.

    The files follow the table's rules (no path twice, at least one); a later
    :func:`load_published` of ``path`` reads the new table.
    """
    path = Path(path)
    write_atomic(path, published_csv(PublishedTable(tuple(files), source=str(path))))
    _CACHE.pop(path, None)


def published_csv(table: PublishedTable) -> bytes:
    """The table in the shipped table's format (header, CRLF line ends), as :func:`write_published` writes it."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=_LINE_END)
    writer.writerow(COLUMNS)
    writer.writerows(_to_fields(file) for file in table)
    return buffer.getvalue().encode("utf-8")

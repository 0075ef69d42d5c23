"""Allen's S3 mirror as a source: one listing gives every data file with its size and ETag.

The mirror holds the AllenSDK cache tree under :data:`ecephys_dl.s3.PREFIX`, metadata CSVs
included. A key that looks like a data file but is not exactly ``session_<S>/session_<S>.nwb``
or ``session_<S>/probe_<P>_lfp.nwb`` (a ``..``, a backslash, a control character, an odd
directory) is refused with its name, never silently skipped and never turned into a path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ecephys_dl.config import Source
from ecephys_dl.errors import SourceError
from ecephys_dl.targets import Mirror, Resolution, Target, TargetKind

if TYPE_CHECKING:
    from ecephys_dl.s3 import S3Client

__all__ = ["LFP_KEY", "MAX_TABLE_BYTES", "SESSION_KEY", "S3Resolver", "check_s3_key", "resolve_s3"]

# Used with fullmatch; ASCII digits only, no leading zero (two keys, one id).
_ID = r"([1-9][0-9]{0,18})"
SESSION_KEY = re.compile(rf"session_{_ID}/session_{_ID}\.nwb")
LFP_KEY = re.compile(rf"session_{_ID}/probe_{_ID}_lfp\.nwb")
# The largest metadata file we accept from a server (the real units.csv is 51 MB).
MAX_TABLE_BYTES = 1 << 30


@dataclass
class S3Resolver:
    """The S3 mirror: the copies of AllenSDK's CSVs in its cache directory, and its data files."""

    s3: S3Client
    name: str = "s3"

    def targets(self, sessions: Sequence[int], probes: Mapping[int, Sequence[int]], *, session_files: bool = True) -> Resolution:
        found, unavailable = resolve_s3(self.s3, sessions, probes, session_files=session_files)
        return Resolution(tuple(found), tuple(unavailable))

    def sized(self, targets: Sequence[Target]) -> list[Target]:
        return list(targets)  # the listing gave every size

    def table_csv(self, table: str) -> bytes:
        from ecephys_dl.s3 import PREFIX

        return self.s3.get_bytes(f"{PREFIX}{table}.csv", max_bytes=MAX_TABLE_BYTES)

    def metrics_csv(self, session_type: str) -> bytes:
        from ecephys_dl.s3 import PREFIX

        return self.s3.get_bytes(f"{PREFIX}{session_type}_analysis_metrics.csv", max_bytes=MAX_TABLE_BYTES)

    def session_metrics_csv(self, session_id: int) -> bytes:
        from ecephys_dl.s3 import PREFIX

        sid = int(session_id)
        return self.s3.get_bytes(f"{PREFIX}session_{sid}/session_{sid}_analysis_metrics.csv", max_bytes=MAX_TABLE_BYTES)


def resolve_s3(
    s3: S3Client,
    sessions: Sequence[int],
    probes: Mapping[int, Sequence[int]],
    *,
    session_files: bool = True,
) -> tuple[list[Target], list[tuple[int, int]]]:
    """The same targets from one listing of the S3 mirror's cache directory.

    A key that looks like a data file but is not exactly one of the two forms is refused
    (:func:`check_s3_key`): a listing holding one is not trusted for anything.
    """
    from ecephys_dl.s3 import PREFIX

    objects: dict[tuple[int, int | None], tuple[str, int, str]] = {}
    for item in s3.list(PREFIX):
        rest = item.key[len(PREFIX) :] if item.key.startswith(PREFIX) else item.key
        ids = check_s3_key(rest, item.key)
        if ids is None:
            continue
        if ids in objects:
            raise SourceError(f"the S3 listing has two data files for the same place: {objects[ids][0]!r} and {item.key!r}")
        objects[ids] = (item.key, item.size, item.etag)
    targets: list[Target] = []
    if session_files:
        missing = [s for s in sessions if (s, None) not in objects]
        if missing:
            raise SourceError(f"the S3 mirror has no NWB file for session(s) {', '.join(map(str, missing))}")
        for s in sessions:
            key, size, etag = objects[(s, None)]
            targets.append(Target.at(TargetKind.SESSION_NWB, s, None, Mirror(Source.S3.value, s3.object_url(key), size, etag)))
    unavailable: list[tuple[int, int]] = []
    for s in sessions:
        for p in probes.get(s, ()):
            if (s, p) in objects:
                key, size, etag = objects[(s, p)]
                targets.append(Target.at(TargetKind.LFP_NWB, s, p, Mirror(Source.S3.value, s3.object_url(key), size, etag)))
            else:
                unavailable.append((s, p))
    return targets, unavailable


def check_s3_key(rest: str, key: str) -> tuple[int, int | None] | None:
    """The (session, probe or None) ids of a data file's key (``rest``: the key after the prefix).

    None for a key that is no data file (``manifest.json``, a CSV, a template, a directory
    marker). :class:`SourceError` naming the key for one that is unsafe anywhere (a ``..``, ``.``
    or empty part, a leading ``/``, a backslash, a NUL or other control character) or that
    looks like a data file (it ends in ``.nwb`` or lies under a ``session_`` directory) but is
    not exactly ``session_<S>/session_<S>.nwb`` or ``session_<S>/probe_<P>_lfp.nwb``.
    """
    if match := SESSION_KEY.fullmatch(rest):
        if match.group(1) == match.group(2):
            return int(match.group(1)), None
    elif match := LFP_KEY.fullmatch(rest):
        return int(match.group(1)), int(match.group(2))
    parts = rest.split("/")
    in_session_dir = parts[0].lower().startswith("session_")
    is_nwb = rest.lower().endswith(".nwb")
    # A key ending in "/" is a directory marker: its last, empty part is allowed.
    if (
        any(ord(c) < 32 or ord(c) == 127 for c in rest)
        or "\\" in rest
        or rest.startswith("/")
        or any(p in ("", ".", "..") for p in parts[:-1])
        or parts[-1] in (".", "..")
    ):
        problem = "it has a '..', '.', empty or absolute part, a backslash or a control character"
    elif not in_session_dir and not is_nwb:
        return None
    elif in_session_dir and not is_nwb:
        # Other files of a session's directory (its analysis metrics CSV) are not data files
        # here; their directory must still be a plain session_<id>.
        if len(parts) == 2 and re.fullmatch(rf"session_{_ID}", parts[0]):
            return None
        problem = "its session directory has an odd name or depth"
    elif match is not None:
        problem = "its directory and file name carry different session ids"
    else:
        problem = "it is not session_<id>/session_<id>.nwb or session_<id>/probe_<id>_lfp.nwb"
    raise SourceError(
        f"the S3 listing has a malformed key that could be taken for a data file: {key[:300]!r} ({problem})",
        hint="the mirror's listing is not trusted; nothing was fetched. --source warehouse reads the same files",
    )



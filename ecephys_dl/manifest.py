"""``manifest.json``: the exact bytes AllenSDK writes, and checking, writing and repairing it.

AllenSDK's ``EcephysProjectCache`` reads the manifest to find every file of the cache; one of
another manifest version means the cache belongs to another AllenSDK release, and is refused
rather than rewritten. Only :func:`repair_manifest` replaces one, keeping the old one aside.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from ecephys_dl.errors import ManifestError
from ecephys_dl.layout import MANIFEST_VERSION, CacheLayout, write_atomic

__all__ = [
    "MANIFEST_VERSION",
    "check_manifest",
    "ensure_manifest",
    "manifest_bytes",
    "repair_manifest",
    "write_manifest",
]

# (key, type, spec, parent_key) in AllenSDK's order; None means no parent_key entry.
_MANIFEST_ENTRIES: tuple[tuple[str, str, str, str | None], ...] = (
    ("BASEDIR", "dir", ".", None),
    ("sessions", "file", "sessions.csv", "BASEDIR"),
    ("probes", "file", "probes.csv", "BASEDIR"),
    ("channels", "file", "channels.csv", "BASEDIR"),
    ("units", "file", "units.csv", "BASEDIR"),
    ("session_data", "dir", "session_%d", "BASEDIR"),
    ("session_nwb", "file", "session_%d.nwb", "session_data"),
    ("session_analysis_metrics", "file", "session_%d_analysis_metrics.csv", "session_data"),
    ("probe_lfp_nwb", "file", "probe_%d_lfp.nwb", "session_data"),
    ("movie_dir", "dir", "natural_movie_templates", "BASEDIR"),
    ("typewise_analysis_metrics", "file", "%s_analysis_metrics.csv", "BASEDIR"),
    ("natural_movie", "file", "natural_movie_%d.h5", "movie_dir"),
    ("natural_scene_dir", "dir", "natural_scene_templates", "BASEDIR"),
    ("natural_scene", "file", "natural_scene_%d.tiff", "natural_scene_dir"),
)


def manifest_bytes() -> bytes:
    """The exact bytes AllenSDK writes for a new cache's ``manifest.json``.

    ``json.dumps(..., indent=2)`` of ``{"manifest": [...]}``, no trailing newline.
    """
    entries: list[dict[str, str]] = [{"type": "manifest_version", "value": MANIFEST_VERSION}]
    for key, kind, spec, parent in _MANIFEST_ENTRIES:
        entry = {"key": key, "type": kind, "spec": spec}
        if parent is not None:
            entry["parent_key"] = parent
        entries.append(entry)
    return json.dumps({"manifest": entries}, indent=2).encode("utf-8")


def check_manifest(path: Path) -> None:
    """Refuse a manifest.json that AllenSDK 0.3.0 caches would not accept (:class:`ManifestError`); never rewrite it."""
    try:
        config = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise ManifestError(
            f"{path} is not a readable manifest: {error}",
            hint="move it away (AllenSDK would not open this cache either), then run again",
        ) from error
    entries = config.get("manifest") if isinstance(config, dict) else None
    if not isinstance(entries, list):
        raise ManifestError(f"{path} has no 'manifest' list: not an AllenSDK cache manifest", hint="move it away, then run again")
    versions = [e.get("value") for e in entries if isinstance(e, dict) and e.get("type") == "manifest_version"]
    if versions != [MANIFEST_VERSION]:
        found = versions[0] if versions else "none"
        raise ManifestError(
            f"{path} is an AllenSDK manifest of version {found}, not {MANIFEST_VERSION}: this cache belongs to another AllenSDK release",
            hint="use a new cache directory for this dataset",
        )


def ensure_manifest(layout: CacheLayout) -> bool:
    """Write AllenSDK's manifest.json if there is none (never replacing one); True if written.

    One already there is checked (:class:`ManifestError` if it is not one we can use).
    """
    if layout.manifest.exists():
        check_manifest(layout.manifest)
        return False
    layout.root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=layout.root, prefix=".manifest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(manifest_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # A hard link fails if another run wrote a manifest meanwhile: theirs stays.
            os.link(tmp, layout.manifest)
        except FileExistsError:
            check_manifest(layout.manifest)
            return False
        except OSError:
            if layout.manifest.exists():
                return False
            os.replace(tmp, layout.manifest)
            tmp = ""
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
    return True


def write_manifest(layout: CacheLayout) -> None:
    """Write AllenSDK's manifest.json whole, replacing what is there."""
    write_atomic(layout.manifest, manifest_bytes())


def repair_manifest(layout: CacheLayout) -> Path | None:
    """Put AllenSDK's manifest.json in place of the one there, which is kept aside as
    ``manifest.json.bad-<YYYYmmddTHHMMSS>`` (local time); where it was kept, or None if there was none."""
    aside = None
    if layout.manifest.exists():
        aside = layout.manifest_aside(time.strftime("%Y%m%dT%H%M%S"))
        os.replace(layout.manifest, aside)
    write_manifest(layout)
    return aside

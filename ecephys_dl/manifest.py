"""AllenSDK's ``manifest.json``: its exact bytes, writing it, and restoring it when it is bad."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ecephys_dl.layout import CacheLayout, manifest_bytes, write_atomic

__all__ = ["repair_manifest"]


def repair_manifest(cache: CacheLayout) -> Path | None:
    """Write AllenSDK's manifest; a manifest in the way is kept as ``manifest.json.bad-<time>``, returned."""
    aside = None
    if cache.manifest.exists():
        aside = cache.manifest.with_name(f"manifest.json.bad-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(cache.manifest, aside)
    write_atomic(cache.manifest, manifest_bytes())
    return aside

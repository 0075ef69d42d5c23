"""Refreshing the published table from the DANDI archive into the cache's state directory.

``ecephys-dl published --refresh`` (and ``verify --refresh-published``) asks the DANDI API for
the current listing of dandisets 000021 and 000022 and writes it, in the shipped table's format,
to ``<cache>/.ecephys-dl/published_files.csv``, where every later run of that cache finds it. The
report says what changed against the table the cache used before (:func:`compare`, a pure
function): a file added, gone, or published with another size or digest (a re-release).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ecephys_dl.config import Settings
from ecephys_dl.published import PublishedTable, write_published

__all__ = ["Changes", "RefreshReport", "compare", "refresh_published"]


@dataclass(frozen=True)
class Changes:
    """What differs between two published tables, by cache path (each tuple sorted)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # another size or SHA-256: re-released

    @property
    def none(self) -> bool:
        return not (self.added or self.removed or self.changed)


def compare(before: PublishedTable, after: PublishedTable) -> Changes:
    """The files ``after`` adds to ``before``, removes from it, and publishes with other bytes."""
    old = {f.cache_path: f for f in before}
    new = {f.cache_path: f for f in after}
    changed = [p for p in old.keys() & new.keys() if (old[p].size, old[p].sha256) != (new[p].size, new[p].sha256)]
    return Changes(tuple(sorted(new.keys() - old.keys())), tuple(sorted(old.keys() - new.keys())), tuple(sorted(changed)))


@dataclass(frozen=True)
class RefreshReport:
    """Where the refreshed table went, what it holds, and what changed against the one used before."""

    path: Path
    files: int
    total_bytes: int
    dandisets: tuple[str, ...]
    before: str  # the source of the table used before: "shipped", or its path
    changes: Changes

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "files": self.files, "total_bytes": self.total_bytes, "dandisets": list(self.dandisets),
                "before": self.before, "added": list(self.changes.added), "removed": list(self.changes.removed),
                "changed": list(self.changes.changed)}  # fmt: skip


def refresh_published(settings: Settings) -> RefreshReport:
    """Fetch the current published table from ``settings.dandi_url`` into the cache's state directory.

    Nothing is written unless the whole listing is sound: a malformed answer is a
    :class:`~ecephys_dl.errors.DandiError` naming the asset, and the table used before stays.
    """
    from ecephys_dl.dandisets import published_from_dandi

    previous = settings.published()
    with settings.client() as client:
        table = published_from_dandi(settings, client)
    path = settings.refreshed_published
    path.parent.mkdir(parents=True, exist_ok=True)
    write_published(path, table)
    return RefreshReport(path, len(table), sum(f.size for f in table), tuple(sorted({f.dandiset for f in table})), previous.source, compare(previous, table))

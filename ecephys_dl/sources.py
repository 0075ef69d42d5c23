"""Choosing the sources of a run, once: the one :class:`~ecephys_dl.targets.Resolver` it uses.

This is the only place that asks which :class:`~ecephys_dl.config.Source` the settings name;
everything else talks to the resolver it returns: the source's own when the run has one, else
a :class:`~ecephys_dl.pooled.PooledResolver` over each source's, in the run's order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecephys_dl.config import Settings, Source

if TYPE_CHECKING:
    import httpx

    from ecephys_dl.rma import RmaProgress
    from ecephys_dl.targets import Resolver

__all__ = ["resolver_for", "source_resolver"]


def resolver_for(settings: Settings, client: httpx.Client, *, progress: RmaProgress | None = None) -> Resolver:
    """The resolver of ``settings.sources``, talking through ``client`` with the run's retry policy."""
    if len(settings.sources) == 1:
        return source_resolver(settings.sources[0], settings, client, progress=progress)
    from ecephys_dl.pooled import PooledResolver

    return PooledResolver(tuple((source.value, source_resolver(source, settings, client, progress=progress)) for source in settings.sources))


def source_resolver(source: Source, settings: Settings, client: httpx.Client, *, progress: RmaProgress | None = None) -> Resolver:
    """The resolver of one source."""
    policy = settings.retry_policy()
    if source is Source.DANDI:
        from ecephys_dl.dandisets import dandi_resolver

        return dandi_resolver(settings, client)
    if source is Source.S3:
        from ecephys_dl.mirror import S3Resolver
        from ecephys_dl.s3 import S3Client

        return S3Resolver(S3Client(settings.s3_url, client=client, policy=policy))
    from ecephys_dl.rma import RmaClient
    from ecephys_dl.warehouse import WarehouseResolver

    rma = RmaClient(settings.warehouse_url, client=client, policy=policy, page_timeout=settings.timeout)
    return WarehouseResolver(rma, progress=progress, allowed_hosts=settings.allowed_hosts, client=client, policy=policy, timeout=settings.timeout)

"""Choosing the source of a run, once: the one :class:`~ecephys_dl.targets.Resolver` it uses.

This is the only place that asks which :class:`~ecephys_dl.config.Source` the settings name;
everything else talks to the resolver it returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ecephys_dl.config import Settings, Source

if TYPE_CHECKING:
    import httpx

    from ecephys_dl.rma import RmaProgress
    from ecephys_dl.targets import Resolver

__all__ = ["resolver_for"]


def resolver_for(settings: Settings, client: httpx.Client, *, progress: RmaProgress | None = None) -> Resolver:
    """The resolver of ``settings.source``, talking through ``client`` with the run's retry policy."""
    policy = settings.retry_policy()
    if settings.source is Source.DANDI:
        from ecephys_dl.dandisets import dandi_resolver

        return dandi_resolver(settings, client)
    if settings.source is Source.S3:
        from ecephys_dl.mirror import S3Resolver
        from ecephys_dl.s3 import S3Client

        return S3Resolver(S3Client(settings.s3_url, client=client, policy=policy))
    from ecephys_dl.rma import RmaClient
    from ecephys_dl.warehouse import WarehouseResolver

    rma = RmaClient(settings.warehouse_url, client=client, policy=policy, page_timeout=settings.timeout)
    return WarehouseResolver(rma, progress=progress, allowed_hosts=settings.allowed_hosts, client=client, policy=policy, timeout=settings.timeout)

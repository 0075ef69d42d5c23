"""A local replica of the Allen warehouse (RMA API and file downloads) and of its S3 mirror.

The real services cannot be reached from test machines, and they misbehave in ways worth
testing against on purpose (stalls, resets, short bodies, changing files). The replica serves a
generated dataset over real HTTP on 127.0.0.1, with faults injected on request::

    from ecephys_dl.replica import Fault, Replica

    with Replica(data_dir, faults=[Fault.parse("drop:after=64K,share=0.5")], seed=1) as replica:
        replica.url      # the warehouse base URL
        replica.s3_url   # the bucket's base URL

``python -m ecephys_dl.replica --help`` runs it from a shell.
"""

from __future__ import annotations

from typing import Any

from ecephys_dl.replica.faults import Fault, FaultKind
from ecephys_dl.replica.server import Replica, ReplicaServer
from ecephys_dl.replica.store import Dataset, DatasetError, ObjectInfo

__all__ = ["Dataset", "DatasetError", "Fault", "FaultKind", "ObjectInfo", "Replica", "ReplicaServer", "make_dataset"]


def __getattr__(name: str) -> Any:
    # The generator pulls in h5py (and pynwb when present); load it only when asked for.
    if name == "make_dataset":
        from ecephys_dl.replica.dataset import make_dataset

        return make_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The RMA queries: the query strings AllenSDK sends to the warehouse, and their wire form.

The query strings are those of PROTOCOL.md §2, built here and nowhere else; ids are checked to
be positive integers, and session types to be plain names, before they go into a query.
:func:`paged` adds AllenSDK's paging clause, :func:`wire` percent-encodes a query as AllenSDK
does, and :func:`query_url` gives the URL of one page.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ecephys_dl.errors import UsageError

__all__ = [
    "QUERY_PATH",
    "STIMULUS_PRODUCT_ID",
    "TABLE_QUERIES",
    "channels_query",
    "lfp_nwb_query",
    "metrics_by_session_query",
    "metrics_by_type_query",
    "paged",
    "probes_query",
    "query_url",
    "session_nwb_query",
    "sessions_query",
    "stimulus_templates_query",
    "units_query",
    "wire",
]

QUERY_PATH = "/api/v2/data/query.json"
STIMULUS_PRODUCT_ID = 714914585
_SESSION_TYPE = re.compile(r"[A-Za-z0-9_.\-]+")

_CHANNEL_COLUMNS = (
    "ecephys_channels.id,ecephys_probe_id,local_index,probe_horizontal_position,probe_vertical_position,"
    "anterior_posterior_ccf_coordinate,dorsal_ventral_ccf_coordinate,left_right_ccf_coordinate,"
    "structures.id as ecephys_structure_id,structures.acronym as ecephys_structure_acronym"
)


def _positive_ids(ids: Sequence[int], what: str) -> list[int]:
    """``ids`` as distinct positive ints in their order; UsageError for anything else."""
    if isinstance(ids, (str, bytes)):
        raise UsageError(f"{what} ids must be a sequence of integers, not {ids!r}")
    checked: list[int] = []
    for value in ids:
        # bool is an int to Python but never an id; numpy integers are Integral and welcome.
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) <= 0:
            raise UsageError(f"not a {what} id: {value!r}", hint="ids are positive whole numbers")
        number = int(value)
        if number not in checked:
            checked.append(number)
    if not checked:
        raise UsageError(f"no {what} ids given")
    return checked


def sessions_query() -> str:
    """Every session, with its specimen, donor, age and well-known files."""
    return "criteria=model::EcephysSession,rma::include,specimen(donor(age)),well_known_files(well_known_file_type)"


def probes_query() -> str:
    """Every probe."""
    return "criteria=model::EcephysProbe"


def channels_query() -> str:
    """Every channel, as the ten ``tabular`` columns of channels.csv."""
    return f"criteria=model::EcephysChannel,rma::include,structure,rma::options[tabular$eq'{_CHANNEL_COLUMNS}']"


def units_query() -> str:
    """Every unit."""
    return "criteria=model::EcephysUnit"


def metrics_by_type_query(session_type: str) -> str:
    """The metric bundles of every unit recorded in sessions of ``session_type``."""
    if not isinstance(session_type, str) or _SESSION_TYPE.fullmatch(session_type) is None:
        raise UsageError(f"not a session type: {session_type!r}", hint="e.g. brain_observatory_1.1")
    return (
        "criteria=model::EcephysUnitMetricBundle,rma::criteria,"
        f"ecephys_unit(ecephys_channel(ecephys_probe(ecephys_session[stimulus_name$in'{session_type}'])))"
    )


def metrics_by_session_query(session_ids: Sequence[int]) -> str:
    """The metric bundles of the units of these sessions (``[id$in1,2,3]``)."""
    ids = ",".join(map(str, _positive_ids(session_ids, "session")))
    return (
        "criteria=model::EcephysUnitMetricBundle,rma::criteria,"
        f"ecephys_unit(ecephys_channel(ecephys_probe(ecephys_session[id$in{ids}])))"
    )


def session_nwb_query(session_id: int | None = None) -> str:
    """The session NWB file of ``session_id``, or of every session at once when None."""
    q = (
        "criteria=model::WellKnownFile,rma::criteria,"
        "well_known_file_type[name$eq'EcephysNwb'][attachable_type$eq'EcephysSession']"
    )
    if session_id is None:
        return q
    (checked,) = _positive_ids([session_id], "session")
    return f"{q}[attachable_id$eq{checked}]"


def lfp_nwb_query(probe_ids: Sequence[int] | None = None) -> str:
    """The LFP NWB files of these probes (``$eq`` for one, ``$in`` for several), or of all when None."""
    q = (
        "criteria=model::WellKnownFile,rma::criteria,"
        "well_known_file_type[name$eq'EcephysLfpNwb'][attachable_type$eq'EcephysProbe']"
    )
    if probe_ids is None:
        return q
    ids = _positive_ids(probe_ids, "probe")
    if len(ids) == 1:
        return f"{q}[attachable_id$eq{ids[0]}]"
    return f"{q}[attachable_id$in{','.join(map(str, ids))}]"


def stimulus_templates_query() -> str:
    """The stimulus template files (natural movies and scenes)."""
    return (
        "criteria=model::WellKnownFile,rma::criteria,"
        f"well_known_file_type[name$eq'Stimulus'][attachable_type$eq'Product'][attachable_id$eq{STIMULUS_PRODUCT_ID}]"
    )


TABLE_QUERIES: Mapping[str, str] = MappingProxyType(
    {"sessions": sessions_query(), "probes": probes_query(), "channels": channels_query(), "units": units_query()}
)


def paged(q: str, start: int, rows: int) -> str:
    """``q`` with AllenSDK's paging clause: ``rows`` records from row ``start``, ordered by id."""
    for name, value, least in (("start", start, 0), ("rows", rows, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"paging {name} must be an integer >= {least}, not {value!r}")
    return f"{q},rma::options[start_row$eq{start}][num_rows$eq{rows}][order$eq'id']"


def wire(q: str) -> str:
    """``q`` percent-encoded as AllenSDK sends it: brackets and spaces escaped, the rest literal."""
    return q.replace("[", "%5B").replace("]", "%5D").replace(" ", "%20")


def query_url(base_url: str, q: str, start: int, rows: int) -> str:
    """The URL of one page of ``q`` on the warehouse at ``base_url``."""
    return f"{base_url.rstrip('/')}{QUERY_PATH}?{wire(paged(q, start, rows))}"

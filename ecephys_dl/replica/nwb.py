"""Write the replica's NWB files: one per session, one LFP file per probe, of a chosen size.

What a file holds (HDF5 paths; ``<P>`` is a probe id)::

    session file                                        LFP file
    /general/devices/<probeX>                           /general/devices/<probeX>
    /general/extracellular_ephys/<probeX>               /general/extracellular_ephys/<probeX>
    /general/extracellular_ephys/electrodes             /general/extracellular_ephys/electrodes
    /units  (spike_times, peak_channel_id)              /acquisition/probe_<P>_lfp/probe_<P>_lfp_data
    /acquisition/raw_running_wheel_rotation     [C]         data [F] (samples x channels), timestamps [G]
    /acquisition/running_wheel_signal_voltage   [F]     /processing/ecephys/lfp_channel_mean       [C]
    /acquisition/running_wheel_supply_voltage   [G]
    /processing/running/running_speed           [G]

``[C]`` is contiguous and uncompressed (:attr:`NwbLayout.raw_region`), ``[G]`` chunked with
gzip, ``[F]`` chunked with a fletcher32 checksum per chunk (:attr:`NwbLayout.fletcher32_chunk`).
The ``[F]`` dataset is the bulk: it grows until the file reaches the size asked for.

Size. The structure is written first (with pynwb or h5py), then the file is reopened with h5py
and the bulk dataset is extended in chunk-aligned slices of at most 8 MiB, measuring the file as
it goes, so memory stays flat whatever the size. The result lands within about one bulk chunk of
the target (chunks are 4 KiB for small files, growing to 1 MiB from 256 MiB on), inside
max(1 %, 16 KiB). A target below the smallest file of a layout gives that smallest file.
Smallest sizes, measured with pynwb 2.8.3, hdmf 3.14.6 and h5py 3.16 (HDF5 2.0):

============================================  ==========  ==========
layout                                        pynwb       h5py
============================================  ==========  ==========
session, 1 probe x 8 channels, 4 units        221 KiB     57 KiB
session, 6 probes x 384 channels, 600 units   486 KiB     339 KiB
LFP, 8 channels                               209 KiB     44 KiB
LFP, 96 channels                              219 KiB     53 KiB
LFP, 384 channels                             248 KiB     85 KiB
============================================  ==========  ==========

pynwb files carry the cached NWB specification (about 165 KiB of their minimum); h5py files do
not, and pynwb reads them with the specification it ships. Each channel costs about 130 bytes
(two variable-length strings and a reference), each unit about 40.

Determinism. Every value comes from ``numpy.random.default_rng`` seeded with the seed and the
file's identifier, the creation date is the session start time, and the object ids are UUIDs
drawn from the same seed, so the same arguments give byte-identical files with either backend.
Bulk data is drawn in fixed blocks, so its values do not depend on the size asked for: a larger
file extends a smaller one's bulk dataset.
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np
import numpy.typing as npt

__all__ = [
    "NwbLayout",
    "ProbeSpec",
    "Region",
    "pynwb_available",
    "write_lfp_nwb",
    "write_session_nwb",
]

_NWB_VERSION: Final = "2.7.0"  # the core schema pynwb 2.8.3 writes; the h5py backend claims the same

_KIB: Final = 1024
_MIB: Final = 1024 * 1024
_MIN_CHUNK: Final = 4 * _KIB  # small enough that one chunk stays well inside the 16 KiB tolerance
_MAX_CHUNK: Final = _MIB  # large chunks write at disk speed; 1 MiB is 1 % of a 100 MiB file
_SLICE_BYTES: Final = 8 * _MIB  # the most bulk data held in memory at once
_BLOCK: Final = 1 << 20  # bulk values are drawn in blocks of this many, whatever the slicing
_GROW_STEPS: Final = 12
_LFP_RATE: Final = 1250.0
_WHEEL_RATE: Final = 60.0
_SIGNAL_RATE: Final = 2500.0

# Stream numbers: each kind of value gets its own seed sequence, so adding one never shifts another.
_IDS, _SPIKES, _CONTIGUOUS, _GZIP_A, _GZIP_B, _BULK, _CLOCK = range(7)


@dataclass(frozen=True)
class ProbeSpec:
    """A probe as the session and LFP files describe it."""

    id: int
    name: str
    channel_ids: tuple[int, ...]
    structure_acronyms: tuple[str | None, ...]  # one per channel (None = unregistered)
    unit_ids: tuple[int, ...]
    unit_channel_ids: tuple[int, ...]  # channel id of each unit

    def __post_init__(self) -> None:
        if len(self.structure_acronyms) != len(self.channel_ids):
            raise ValueError(
                f"probe {self.id}: {len(self.channel_ids)} channel ids but "
                f"{len(self.structure_acronyms)} structure acronyms"
            )
        if len(self.unit_channel_ids) != len(self.unit_ids):
            raise ValueError(
                f"probe {self.id}: {len(self.unit_ids)} unit ids but {len(self.unit_channel_ids)} unit channel ids"
            )


@dataclass(frozen=True)
class Region:
    """Where a dataset's bytes lie in a file."""

    dataset: str  # HDF5 path of the dataset
    offset: int  # byte offset in the file
    length: int  # bytes


@dataclass(frozen=True)
class NwbLayout:
    """What was written: the file, its size, and two regions the corruption tests aim at."""

    path: Path
    size: int
    backend: str  # "pynwb" or "h5py"
    raw_region: Region  # all data of a contiguous uncompressed dataset: damage stays readable
    fletcher32_chunk: Region  # one chunk of a fletcher32 dataset: damage makes reading it fail


def pynwb_available() -> bool:
    """Whether pynwb (a test extra, never a runtime dependency) can be imported."""
    try:
        import pynwb  # noqa: F401
    except ImportError:
        return False
    return True


def write_session_nwb(
    path: Path,
    *,
    session_id: int,
    probes: Sequence[ProbeSpec],
    size: int,
    seed: int,
    start_time: datetime,
    backend: str | None = None,
) -> NwbLayout:
    """Write a session NWB file of about ``size`` bytes at ``path`` (overwriting it)."""
    chosen = _backend(backend)
    target = _target(size)
    probes = tuple(probes)
    entropy = (seed % 2**64, session_id % 2**64)
    units = tuple((u, c) for p in probes for u, c in zip(p.unit_ids, p.unit_channel_ids, strict=True))
    spike_times, spike_index = _spike_times(entropy, len(units))
    small = _small_values(target, _structure(chosen, sum(len(p.channel_ids) for p in probes), len(units)))
    bulk = _Stream(entropy, _BULK, amplitude=0.5, centre=1.0)
    chunk = _chunk_bytes(target) // 4
    content = _Content(
        identifier=str(session_id),
        session_id=session_id,
        description=f"Visual Coding - Neuropixels session {session_id}",
        start_time=_utc(start_time),
        entropy=entropy,
        probes=probes,
        unit_ids=np.array([u for u, _ in units], dtype=np.int64),
        peak_channel_ids=np.array([c for _, c in units], dtype=np.int64),
        spike_times=spike_times,
        spike_index=spike_index,
        modules=(("running", "running speed derived from the running wheel encoder"),),
        series=(
            _Series(
                module=None,
                name="raw_running_wheel_rotation",
                description="wheel rotation between frames",
                unit="radians",
                data=_Array(_uniform(entropy, _CONTIGUOUS, small, scale=0.05)),
                rate=_WHEEL_RATE,
            ),
            _Series(
                module=None,
                name="running_wheel_signal_voltage",
                description="running wheel encoder signal",
                unit="V",
                data=_Array(bulk.values(0, chunk), chunks=(chunk,), fletcher32=True, growable=True),
                rate=_SIGNAL_RATE,
            ),
            _Series(
                module=None,
                name="running_wheel_supply_voltage",
                description="running wheel encoder supply",
                unit="V",
                data=_Array(_supply(entropy, _GZIP_A, small), chunks=_gzip_chunks(small), gzip=True),
                rate=_WHEEL_RATE,
            ),
            _Series(
                module="running",
                name="running_speed",
                description="running speed",
                unit="cm/s",
                data=_Array(_walk(entropy, _GZIP_B, small), chunks=_gzip_chunks(small), gzip=True),
                rate=_WHEEL_RATE,
            ),
        ),
        bulk=_Growth(data="/acquisition/running_wheel_signal_voltage/data", stream=bulk),
        contiguous="/acquisition/raw_running_wheel_rotation/data",
    )
    return _write(Path(path), content, chosen, target)


def write_lfp_nwb(
    path: Path,
    *,
    session_id: int,
    probe: ProbeSpec,
    size: int,
    seed: int,
    start_time: datetime,
    backend: str | None = None,
) -> NwbLayout:
    """Write the LFP NWB file of one probe, of about ``size`` bytes, at ``path`` (overwriting it)."""
    chosen = _backend(backend)
    target = _target(size)
    n_channels = len(probe.channel_ids)
    if n_channels == 0:
        raise ValueError(f"probe {probe.id} has no channels: an LFP file needs at least one")
    entropy = (seed % 2**64, probe.id % 2**64)
    small = _small_values(target, _structure(chosen, n_channels, 0))

    chunk_bytes = _chunk_bytes(target)
    rows = max(1, chunk_bytes // (4 * n_channels))
    ts_rows = max(512, chunk_bytes // 8)
    bulk = _Stream(entropy, _BULK, amplitude=2e-4, centre=0.0)
    lfp = f"probe_{probe.id}_lfp"
    series = f"{lfp}_data"
    t0 = 1.0 + float(_rng(entropy, _CLOCK).random())  # recordings start a little after the clock
    content = _Content(
        identifier=str(probe.id),
        session_id=session_id,
        description=f"LFP of probe {probe.id} ({probe.name}), Visual Coding - Neuropixels session {session_id}",
        start_time=_utc(start_time),
        entropy=entropy,
        probes=(probe,),
        unit_ids=None,
        peak_channel_ids=None,
        spike_times=None,
        spike_index=None,
        modules=(("ecephys", "summaries of the probe's LFP"),),
        series=(
            _Series(
                module=None,
                lfp=lfp,
                name=series,
                description=f"local field potential of {probe.name}",
                unit="volts",
                data=_Array(
                    bulk.values(0, rows * n_channels).reshape(rows, n_channels),
                    chunks=(rows, n_channels),
                    fletcher32=True,
                    growable=True,
                ),
                timestamps=_Array(
                    t0 + np.arange(rows, dtype=np.float64) / _LFP_RATE,
                    chunks=(ts_rows,),
                    gzip=True,
                    shuffle=True,
                    growable=True,
                ),
            ),
            _Series(
                module="ecephys",
                name="lfp_channel_mean",
                description="mean LFP across channels",
                unit="volts",
                data=_Array(_uniform(entropy, _CONTIGUOUS, small, scale=1e-4)),
                rate=_LFP_RATE,
            ),
        ),
        bulk=_Growth(
            data=f"/acquisition/{lfp}/{series}/data",
            stream=bulk,
            timestamps=f"/acquisition/{lfp}/{series}/timestamps",
            t0=t0,
            rate=_LFP_RATE,
        ),
        contiguous="/processing/ecephys/lfp_channel_mean/data",
    )
    return _write(Path(path), content, chosen, target)


# --------------------------------------------------------------------------- what a file holds


@dataclass(frozen=True, eq=False)
class _Array:
    """A dataset's first values and how they are stored (no chunks: contiguous)."""

    data: npt.NDArray[Any]
    chunks: tuple[int, ...] | None = None
    gzip: bool = False
    shuffle: bool = False
    fletcher32: bool = False
    growable: bool = False  # first axis unlimited, so the bulk can be extended after the first write


@dataclass(frozen=True, eq=False)
class _Series:
    """A TimeSeries, or the ElectricalSeries of an LFP container when ``lfp`` names one."""

    module: str | None  # processing module, or None for /acquisition
    name: str
    description: str
    unit: str
    data: _Array
    rate: float | None = None
    timestamps: _Array | None = None
    lfp: str | None = None

    @property
    def path(self) -> str:
        if self.module is not None:
            return f"/processing/{self.module}/{self.name}"
        if self.lfp is not None:
            return f"/acquisition/{self.lfp}/{self.name}"
        return f"/acquisition/{self.name}"


class _Stream:
    """Deterministic float32 bulk values, drawn in fixed blocks so any slicing gives the same values."""

    def __init__(self, entropy: tuple[int, int], stream: int, *, amplitude: float, centre: float) -> None:
        self._entropy = entropy
        self._stream = stream
        self._amplitude = amplitude
        self._centre = centre
        self._cached: tuple[int, npt.NDArray[np.float32]] | None = None

    def _block(self, k: int) -> npt.NDArray[np.float32]:
        if self._cached is None or self._cached[0] != k:
            block = _rng(self._entropy, self._stream, k).random(_BLOCK, dtype=np.float32)
            # In place: uniform draws are the fastest numpy offers, and this keeps one buffer.
            block -= np.float32(0.5)
            block *= np.float32(2 * self._amplitude)
            block += np.float32(self._centre)
            self._cached = (k, block)
        return self._cached[1]

    def values(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        """Values ``start`` to ``stop`` (exclusive) of the stream."""
        out = np.empty(stop - start, dtype=np.float32)
        pos = start
        while pos < stop:
            k, first = divmod(pos, _BLOCK)
            n = min(_BLOCK - first, stop - pos)
            out[pos - start : pos - start + n] = self._block(k)[first : first + n]
            pos += n
        return out


@dataclass(frozen=True, eq=False)
class _Growth:
    """The bulk dataset that is extended to reach the target size, and its timestamps if any."""

    data: str
    stream: _Stream
    timestamps: str | None = None
    t0: float = 0.0
    rate: float = 1.0


@dataclass(frozen=True, eq=False)
class _Content:
    """Everything one file holds, independent of the backend that writes it."""

    identifier: str
    session_id: int
    description: str
    start_time: datetime
    entropy: tuple[int, int]
    probes: tuple[ProbeSpec, ...]
    unit_ids: npt.NDArray[np.int64] | None  # None: no units table
    peak_channel_ids: npt.NDArray[np.int64] | None
    spike_times: npt.NDArray[np.float64] | None
    spike_index: npt.NDArray[np.int64] | None  # end of each unit's spikes in spike_times
    modules: tuple[tuple[str, str], ...]  # processing modules: name, description
    series: tuple[_Series, ...]
    bulk: _Growth
    contiguous: str  # path of the contiguous uncompressed dataset

    @property
    def channel_ids(self) -> npt.NDArray[np.int64]:
        return np.array([c for p in self.probes for c in p.channel_ids], dtype=np.int64)

    @property
    def locations(self) -> list[str]:
        return [s or "" for p in self.probes for s in p.structure_acronyms]

    @property
    def group_names(self) -> list[str]:
        return [p.name for p in self.probes for _ in p.channel_ids]


def _backend(backend: str | None) -> str:
    if backend is None:
        return "pynwb" if pynwb_available() else "h5py"
    if backend not in ("pynwb", "h5py"):
        raise ValueError(f"unknown NWB backend {backend!r}: use 'pynwb', 'h5py' or None")
    if backend == "pynwb" and not pynwb_available():
        raise RuntimeError(
            "the pynwb backend was asked for but pynwb is not installed: "
            "install the test extra (pip install 'ecephys-dl[test]') or use backend='h5py'"
        )
    return backend


def _target(size: int) -> int:
    if size < 0:
        raise ValueError(f"a file size cannot be negative: {size}")
    return int(size)


def _utc(when: datetime) -> datetime:
    # NWB wants an aware time; a naive one is taken as UTC rather than the machine's zone,
    # so the same arguments give the same file everywhere.
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _rng(entropy: tuple[int, int], *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*entropy, *stream]))


def _chunk_bytes(target: int) -> int:
    """Bulk chunk size: about 1/256 of the file, a power of two between 4 KiB and 1 MiB."""
    wanted = max(1, target // 256)
    return min(_MAX_CHUNK, max(_MIN_CHUNK, 1 << (wanted.bit_length() - 1)))


def _structure(backend: str, n_channels: int, n_units: int) -> int:
    """A rough guess at the bytes a file takes before its data (measured; see the table above)."""
    spec = 165 * _KIB if backend == "pynwb" else 0
    return spec + 40 * _KIB + 130 * n_channels + 40 * n_units


def _small_values(target: int, structure: int) -> int:
    """Values in each small dataset: 1/64 of the data part of the file as float32, 4 KiB to 4 MiB.

    Sized from what is left after the structure, so a target just above the smallest file is not
    pushed past the tolerance by the small datasets alone.
    """
    return min(4 * _MIB, max(4 * _KIB, (target - structure) // 64)) // 4


def _gzip_chunks(n: int) -> tuple[int]:
    return (min(n, 8192),)


def _uniform(entropy: tuple[int, int], stream: int, n: int, *, scale: float) -> npt.NDArray[np.float32]:
    values = _rng(entropy, stream).random(n, dtype=np.float32)
    values -= np.float32(0.5)
    values *= np.float32(2 * scale)
    return values


def _supply(entropy: tuple[int, int], stream: int, n: int) -> npt.NDArray[np.float32]:
    # A steady 5 V with millivolt noise: few distinct values, so gzip has something to do.
    noise = _rng(entropy, stream).integers(-8, 9, n).astype(np.float32)
    return np.float32(5.0) + noise * np.float32(0.001)


def _walk(entropy: tuple[int, int], stream: int, n: int) -> npt.NDArray[np.float32]:
    steps = _rng(entropy, stream).integers(-3, 4, n)
    return (np.abs(np.cumsum(steps)) * 0.01).astype(np.float32)


def _spike_times(entropy: tuple[int, int], n_units: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """A few sorted spike times per unit, and the end of each unit's run in the flat array."""
    rng = _rng(entropy, _SPIKES)
    counts = rng.integers(3, 9, n_units)
    ends = np.cumsum(counts, dtype=np.int64)
    times = np.round(rng.uniform(1.0, 3600.0, int(ends[-1]) if n_units else 0), 6)
    starts = ends - counts
    for s, e in zip(starts, ends, strict=True):
        times[s:e].sort()
    return times, ends


def _object_ids(entropy: tuple[int, int]) -> Iterator[str]:
    rng = _rng(entropy, _IDS)
    while True:
        yield str(uuid.UUID(bytes=rng.bytes(16), version=4))


# --------------------------------------------------------------------------- writing


def _write(path: Path, content: _Content, backend: str, target: int) -> NwbLayout:
    if backend == "pynwb":
        _write_pynwb(path, content)
    else:
        _write_h5py(path, content)
    with h5py.File(path, "r+") as f:
        _grow(f, content.bulk, target)
    return _layout(path, content, backend)


def _grow(f: h5py.File, growth: _Growth, target: int) -> None:
    """Extend the bulk dataset by whole chunks until one more chunk would pass ``target``."""
    data = f[growth.data]
    stamps = f[growth.timestamps] if growth.timestamps is not None else None
    width = math.prod(data.shape[1:])
    row_bytes = data.dtype.itemsize * width
    chunk_rows = data.chunks[0]
    # First guess at what a row costs in the file, corrected by measurement after each step.
    cost = row_bytes * 1.01 + (8.0 if stamps is not None else 0.0)
    for _ in range(_GROW_STEPS):
        f.flush()  # chunks waiting in the chunk cache have no file space yet
        before = f.id.get_filesize()
        rows = data.shape[0]
        goal = (rows + int((target - before) / cost)) // chunk_rows * chunk_rows
        if goal <= rows:
            return
        _append(data, growth.stream, rows, goal, width, chunk_rows)
        if stamps is not None:
            _append_timestamps(stamps, growth, rows, goal)
        f.flush()
        grown = f.id.get_filesize() - before
        cost = max(float(row_bytes), grown / (goal - rows))


def _append(data: h5py.Dataset, stream: _Stream, start: int, stop: int, width: int, chunk_rows: int) -> None:
    data.resize(stop, axis=0)
    # Whole chunks per slice: a filtered chunk written in parts is read back and rewritten.
    step = max(1, _SLICE_BYTES // (data.dtype.itemsize * width * chunk_rows)) * chunk_rows
    for lo in range(start, stop, step):
        hi = min(lo + step, stop)
        values = stream.values(lo * width, hi * width)
        data[lo:hi] = values.reshape((hi - lo, *data.shape[1:]))


def _append_timestamps(stamps: h5py.Dataset, growth: _Growth, start: int, stop: int) -> None:
    stamps.resize(stop, axis=0)
    step = max(1, _SLICE_BYTES // 8 // stamps.chunks[0]) * stamps.chunks[0]
    lo = start
    while lo < stop:
        hi = min((lo // step + 1) * step, stop)  # slices end on chunk boundaries
        stamps[lo:hi] = growth.t0 + np.arange(lo, hi, dtype=np.float64) / growth.rate
        lo = hi


def _layout(path: Path, content: _Content, backend: str) -> NwbLayout:
    with h5py.File(path, "r") as f:
        raw = f[content.contiguous]
        offset = raw.id.get_offset()
        if offset is None:
            raise RuntimeError(f"{path}: {content.contiguous} has no storage")
        raw_region = Region(raw.name, int(offset), int(raw.id.get_storage_size()))
        bulk = f[content.bulk.data]
        info = bulk.id.get_chunk_info(bulk.id.get_num_chunks() // 2)
        chunk_region = Region(bulk.name, int(info.byte_offset), int(info.size))
    return NwbLayout(
        path=path,
        size=os.path.getsize(path),
        backend=backend,
        raw_region=raw_region,
        fletcher32_chunk=chunk_region,
    )


# --------------------------------------------------------------------------- pynwb backend


def _write_pynwb(path: Path, content: _Content) -> None:
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from hdmf.common import DynamicTable, ElementIdentifiers, VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.ecephys import LFP, ElectricalSeries
    from pynwb.misc import Units

    def stored(array: _Array) -> Any:
        if array.chunks is None:
            return array.data
        return H5DataIO(
            data=array.data,
            chunks=array.chunks,
            maxshape=(None, *array.data.shape[1:]) if array.growable else None,
            compression="gzip" if array.gzip else None,
            shuffle=array.shuffle,
            fletcher32=array.fletcher32,
        )

    nwb = NWBFile(
        session_description=content.description,
        identifier=content.identifier,
        session_start_time=content.start_time,
        file_create_date=content.start_time,
        institution="Allen Institute for Brain Science",
        session_id=str(content.session_id),
    )
    groups = {}
    for probe in content.probes:
        device = nwb.create_device(name=probe.name, description=_device_description(probe))
        groups[probe.name] = nwb.create_electrode_group(
            name=probe.name, description=_group_description(probe), location="", device=device
        )
    if content.channel_ids.size:
        names = content.group_names
        nwb.electrodes = DynamicTable(
            name="electrodes",
            description=_ELECTRODES,
            id=ElementIdentifiers(name="id", data=content.channel_ids),
            columns=[
                VectorData(name="location", description=_COLUMNS["location"], data=content.locations),
                VectorData(name="group", description=_COLUMNS["group"], data=[groups[n] for n in names]),
                VectorData(name="group_name", description=_COLUMNS["group_name"], data=names),
            ],
        )
    if content.unit_ids is not None and content.unit_ids.size:
        assert content.spike_times is not None and content.spike_index is not None
        spikes = VectorData(name="spike_times", description=_COLUMNS["spike_times"], data=content.spike_times)
        nwb.units = Units(
            name="units",
            description=_UNITS,
            id=ElementIdentifiers(name="id", data=content.unit_ids),
            columns=[
                spikes,
                VectorIndex(name="spike_times_index", data=content.spike_index, target=spikes),
                VectorData(name="peak_channel_id", description=_COLUMNS["peak_channel_id"], data=content.peak_channel_ids),
            ],
        )
    for name, description in content.modules:
        nwb.create_processing_module(name=name, description=description)
    for series in content.series:
        timing: dict[str, Any] = (
            {"rate": series.rate} if series.timestamps is None else {"timestamps": stored(series.timestamps)}
        )
        if series.lfp is not None:
            region = nwb.create_electrode_table_region(
                region=list(range(content.channel_ids.size)), description=_REGION
            )
            # The LFP container joins the file before its series, so the series' electrode
            # region finds the electrodes table among its ancestors when it is attached.
            lfp = LFP(name=series.lfp)
            nwb.add_acquisition(lfp)
            lfp.add_electrical_series(
                ElectricalSeries(
                    name=series.name,
                    description=series.description,
                    data=stored(series.data),
                    electrodes=region,
                    **timing,
                )
            )
            continue
        ts = TimeSeries(
            name=series.name,
            description=series.description,
            data=stored(series.data),
            unit=series.unit,
            **timing,
        )
        if series.module is None:
            nwb.add_acquisition(ts)
        else:
            nwb.processing[series.module].add(ts)

    ids = _object_ids(content.entropy)
    for container in nwb.all_children():
        # hdmf draws object ids with uuid4 and offers no public way to choose them; seeded ids
        # make the same arguments give the same bytes.
        setattr(container, "_AbstractContainer__object_id", next(ids))
    nwb.all_children()  # rebuilds the id -> object index from the new ids
    with warnings.catch_warnings():
        # Callers write to a temporary name (``x.nwb.part``) and rename; pynwb's advice about the
        # extension does not apply to that name.
        warnings.filterwarnings("ignore", message="The file path provided: .* does not end in '.nwb'")
        io = NWBHDF5IO(str(path), "w")
    with io:
        io.write(nwb)


# --------------------------------------------------------------------------- h5py backend


def _write_h5py(path: Path, content: _Content) -> None:
    ids = _object_ids(content.entropy)
    text = h5py.string_dtype()

    def typed(obj: h5py.Group | h5py.Dataset, namespace: str, kind: str, **attrs: Any) -> None:
        for key, value in attrs.items():
            obj.attrs[key] = value
        obj.attrs["namespace"] = namespace
        obj.attrs["neurodata_type"] = kind
        obj.attrs["object_id"] = next(ids)

    def create(group: h5py.Group, name: str, array: _Array) -> h5py.Dataset:
        return group.create_dataset(
            name,
            data=array.data,
            chunks=array.chunks,
            maxshape=(None, *array.data.shape[1:]) if array.growable else None,
            compression="gzip" if array.gzip else None,
            shuffle=array.shuffle,
            fletcher32=array.fletcher32,
        )

    def column(table: h5py.Group, name: str, data: Any, **attrs: Any) -> h5py.Dataset:
        dset = table.create_dataset(name, data=data)
        typed(dset, "hdmf-common", "VectorData", description=_COLUMNS[name], **attrs)
        return dset

    start = content.start_time.isoformat()
    with h5py.File(path, "w") as f:
        typed(f, "core", "NWBFile", nwb_version=_NWB_VERSION)
        for name in ("acquisition", "analysis", "processing", "stimulus/presentation", "stimulus/templates"):
            f.create_group(name)
        f.create_dataset("file_create_date", data=np.array([start], dtype=object), dtype=text)
        f.create_dataset("identifier", data=content.identifier, dtype=text)
        f.create_dataset("session_description", data=content.description, dtype=text)
        f.create_dataset("session_start_time", data=start, dtype=text)
        f.create_dataset("timestamps_reference_time", data=start, dtype=text)
        general = f.create_group("general")
        general.create_dataset("institution", data="Allen Institute for Brain Science", dtype=text)
        general.create_dataset("session_id", data=str(content.session_id), dtype=text)
        devices = general.create_group("devices")
        ephys = general.create_group("extracellular_ephys")

        groups = {}
        for probe in content.probes:
            typed(devices.create_group(probe.name), "core", "Device", description=_device_description(probe))
            group = ephys.create_group(probe.name)
            typed(group, "core", "ElectrodeGroup", description=_group_description(probe), location="")
            group["device"] = h5py.SoftLink(f"/general/devices/{probe.name}")
            groups[probe.name] = group.ref

        electrodes = None
        if content.channel_ids.size:
            names = content.group_names
            electrodes = ephys.create_group("electrodes")
            typed(
                electrodes,
                "hdmf-common",
                "DynamicTable",
                colnames=np.array(["location", "group", "group_name"], dtype=object),
                description=_ELECTRODES,
            )
            typed(electrodes.create_dataset("id", data=content.channel_ids), "hdmf-common", "ElementIdentifiers")
            column(electrodes, "location", np.array(content.locations, dtype=object))
            column(electrodes, "group", np.array([groups[n] for n in names], dtype=h5py.ref_dtype))
            column(electrodes, "group_name", np.array(names, dtype=object))

        if content.unit_ids is not None and content.unit_ids.size:
            assert content.spike_times is not None and content.spike_index is not None
            units = f.create_group("units")
            typed(
                units,
                "core",
                "Units",
                colnames=np.array(["spike_times", "peak_channel_id"], dtype=object),
                description=_UNITS,
            )
            typed(units.create_dataset("id", data=content.unit_ids), "hdmf-common", "ElementIdentifiers")
            spikes = column(units, "spike_times", content.spike_times)
            # hdmf stores an index in the smallest unsigned type that holds it; do the same.
            index = units.create_dataset(
                "spike_times_index", data=content.spike_index.astype(np.min_scalar_type(int(content.spike_index[-1])))
            )
            typed(
                index,
                "hdmf-common",
                "VectorIndex",
                description="Index for VectorData 'spike_times'",
                target=spikes.ref,
            )
            column(units, "peak_channel_id", content.peak_channel_ids)

        for name, description in content.modules:
            typed(f.create_group(f"processing/{name}"), "core", "ProcessingModule", description=description)
        for series in content.series:
            if series.lfp is not None:
                typed(f.create_group(f"acquisition/{series.lfp}"), "core", "LFP")
            group = f.create_group(series.path)
            kind = "ElectricalSeries" if series.lfp is not None else "TimeSeries"
            typed(group, "core", kind, comments="no comments", description=series.description)
            data = create(group, "data", series.data)
            data.attrs.update({"conversion": 1.0, "offset": 0.0, "resolution": -1.0, "unit": series.unit})
            if series.timestamps is None:
                starting = group.create_dataset("starting_time", data=0.0)
                starting.attrs.update({"rate": float(series.rate or 1.0), "unit": "seconds"})
            else:
                stamps = create(group, "timestamps", series.timestamps)
                stamps.attrs.update({"interval": np.int32(1), "unit": "seconds"})
            if series.lfp is not None and electrodes is not None:
                region = group.create_dataset("electrodes", data=np.arange(content.channel_ids.size, dtype=np.int64))
                typed(region, "hdmf-common", "DynamicTableRegion", description=_REGION, table=electrodes.ref)


# --------------------------------------------------------------------------- shared text

_ELECTRODES: Final = "metadata about extracellular electrodes"
_UNITS: Final = "units sorted from the session's probes"
_REGION: Final = "all channels of the probe"
_COLUMNS: Final = {
    # The descriptions pynwb gives the standard columns, so both backends write the same text.
    "location": "the location of channel within the subject e.g. brain region",
    "group": "a reference to the ElectrodeGroup this electrode is a part of",
    "group_name": "the name of the ElectrodeGroup this electrode is a part of",
    "spike_times": "the spike times for each unit",
    "peak_channel_id": "id of the channel where the unit's waveform peaks",
}


def _device_description(probe: ProbeSpec) -> str:
    return f"Neuropixels probe {probe.id}"


def _group_description(probe: ProbeSpec) -> str:
    return f"channels of {probe.name} (probe {probe.id})"

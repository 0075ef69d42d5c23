"""Write the replica's NWB files: one per session, one LFP file per probe, of a chosen size.

What a file holds (HDF5 paths; ``<P>`` is a probe id)::

    session file                                        LFP file
    /general/devices/<probeX>                           /general/devices/<probeX>
    /general/extracellular_ephys/<probeX>               /general/extracellular_ephys/<probeX>
    /general/extracellular_ephys/electrodes             /general/extracellular_ephys/electrodes
    /general/subject                        (pynwb)     /acquisition/probe_<P>_lfp/probe_<P>_lfp_data
    /units  (spike_times, peak_channel_id)                  data [F] (samples x channels), timestamps [G]
    /intervals/<stimulus>_presentations     (pynwb)     /processing/ecephys/lfp_channel_mean       [C]
    /acquisition/raw_running_wheel_rotation     [C]
    /acquisition/running_wheel_signal_voltage   [F]
    /acquisition/running_wheel_supply_voltage   [G]
    /processing/running/running_speed           [G]

``[C]`` is contiguous and uncompressed (:attr:`NwbLayout.raw_region`), ``[G]`` chunked with
gzip, ``[F]`` chunked with a fletcher32 checksum per chunk (:attr:`NwbLayout.fletcher32_chunk`).
The ``[F]`` dataset is the bulk: it grows until the file reaches the size asked for.

What AllenSDK reads. With pynwb, the files carry what AllenSDK 2.16.2's ``EcephysSession`` reads
from the released files: the ``ndx-aibs-ecephys`` types (namespace in ``nwb_spec/``) for the
probes (``EcephysProbe``: probe_id, sampling_rate), their channel groups
(``EcephysElectrodeGroup``: probe_id, has_lfp_data, lfp_sampling_rate) and the mouse
(``EcephysSpecimen``); electrode columns probe_id, local_index, probe_horizontal_position,
probe_vertical_position, valid_data and x/y/z (CCF); unit columns local_index, cluster_id,
quality, the quality and waveform metrics, spike_amplitudes and waveform_mean (both ragged);
the session type as ``stimulus_notes``; and a short stimulus table. Facts that
:class:`ProbeSpec` or :class:`Specimen` do not give are derived or drawn from the seed (see
there). The h5py backend writes core NWB types only: pynwb reads its files, AllenSDK's session
reader does not.

Size. The structure is written first (with pynwb or h5py), then the file is reopened with h5py
and the bulk dataset is extended in chunk-aligned slices of at most 8 MiB, measuring the file as
it goes, so memory stays flat whatever the size. The result lands within about one bulk chunk of
the target (chunks are 4 KiB for small files, growing to 1 MiB from 256 MiB on), inside
max(1 %, 16 KiB). A target below the smallest file of a layout gives that smallest file.
Smallest sizes, measured with pynwb 2.8.3, hdmf 3.14.6 and h5py 3.16 (HDF5 2.0):

=============================================  ==========  ==========
layout                                         pynwb       h5py
=============================================  ==========  ==========
session, 1 probe x 8 channels, 4 units         281 KiB     57 KiB
session, 6 probes x 384 channels, 600 units    727 KiB     339 KiB
session, 6 probes x 384 channels, 1800 units   1088 KiB    409 KiB
LFP, 8 channels                                212 KiB     43 KiB
LFP, 96 channels                               233 KiB     53 KiB
LFP, 384 channels                              277 KiB     83 KiB
=============================================  ==========  ==========

pynwb files carry the cached NWB specification (about 170 KiB of their minimum); h5py files do
not, and pynwb reads them with the specification it ships. In h5py files each channel costs
about 130 bytes (two variable-length strings and a reference) and each unit about 40; in pynwb
files a unit costs about 300 (22 metrics, a quality string, spike amplitudes).

Determinism. Every value comes from ``numpy.random.default_rng`` seeded with the seed and the
file's identifier, the creation date is the session start time, and the object ids are UUIDs
drawn from the same seed, so the same arguments give byte-identical files with either backend.
Bulk data is drawn in fixed blocks, so its values do not depend on the size asked for: a larger
file extends a smaller one's bulk dataset.
"""

from __future__ import annotations

import functools
import math
import os
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np
import numpy.typing as npt

__all__ = [
    "NwbLayout",
    "ProbeSpec",
    "Region",
    "Specimen",
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
_AP_RATE: Final = 30_000.0  # Neuropixels 1.0 action-potential band
_LFP_DECIMATION: Final = 24  # the LFP band is sampled at 2.5 kHz and the released LFP keeps every other sample
_WHEEL_RATE: Final = 60.0
_SIGNAL_RATE: Final = 2500.0

# Stream numbers: each kind of value gets its own seed sequence, so adding one never shifts another.
_IDS, _SPIKES, _CONTIGUOUS, _GZIP_A, _GZIP_B, _BULK, _CLOCK, _RATES, _METRICS, _WAVEFORMS, _STIMULI, _SUBJECT = range(12)

# The extension namespace of the Allen Institute's ecephys types (see nwb_spec/): the released files
# describe probes, their channel groups and the mouse with it, and AllenSDK reads those types.
_EXTENSION: Final = "ndx-aibs-ecephys"
_EXTENSION_FILE: Final = Path(__file__).with_name("nwb_spec") / f"{_EXTENSION}.namespace.yaml"
_GROUP_LOCATION: Final = "See electrode locations"  # what the released files say; locations are per channel
_WAVEFORM_SAMPLES: Final = 82  # samples of a mean waveform in the released files
_PACK_BYTES: Final = 8 * _KIB  # table columns from this size on are compressed

# Unit columns beyond spike times and peak channel, as AllenSDK names them, with the warehouse's
# name of the same metric (EcephysUnit records) where the two differ.
_UNIT_METRICS: Final[tuple[tuple[str, str, str], ...]] = (
    ("firing_rate", "firing_rate", "mean spike rate over the session (Hz)"),
    ("isi_violations", "isi_violations", "contamination estimated from refractory-period violations"),
    ("presence_ratio", "presence_ratio", "fraction of the session in which the unit fired"),
    ("amplitude_cutoff", "amplitude_cutoff", "estimated fraction of spikes missed below the detection threshold"),
    ("isolation_distance", "isolation_distance", "Mahalanobis isolation distance of the cluster"),
    ("l_ratio", "l_ratio", "L-ratio of the cluster"),
    ("d_prime", "d_prime", "separability of the cluster (linear discriminant)"),
    ("nn_hit_rate", "nn_hit_rate", "nearest-neighbour hit rate"),
    ("nn_miss_rate", "nn_miss_rate", "nearest-neighbour miss rate"),
    ("max_drift", "max_drift", "largest drift of the peak channel (microns)"),
    ("cumulative_drift", "cumulative_drift", "summed drift of the peak channel (microns)"),
    ("silhouette_score", "silhouette_score", "silhouette score of the cluster"),
    ("waveform_duration", "duration", "trough-to-peak time of the mean waveform (ms)"),
    ("waveform_halfwidth", "halfwidth", "width of the mean waveform at half its amplitude (ms)"),
    ("PT_ratio", "PT_ratio", "peak-to-trough ratio of the mean waveform"),
    ("repolarization_slope", "repolarization_slope", "slope of the waveform after the trough"),
    ("recovery_slope", "recovery_slope", "slope of the waveform after the peak"),
    ("amplitude", "amplitude", "peak-to-trough amplitude of the mean waveform (microvolts)"),
    ("spread", "spread", "extent of the waveform along the probe (microns)"),
    ("velocity_above", "velocity_above", "propagation speed of the waveform above the peak channel"),
    ("velocity_below", "velocity_below", "propagation speed of the waveform below the peak channel"),
    ("snr", "snr", "signal-to-noise ratio of the waveform on the peak channel"),
)
# Ranges of the metrics given to units that ProbeSpec leaves without any: inside AllenSDK's default
# quality filters, so a replica session shows units unless the caller passes the real metrics.
_SYNTHETIC_METRICS: Final[dict[str, tuple[float, float]]] = {
    "firing_rate": (0.1, 40.0), "isi_violations": (0.0, 0.45), "presence_ratio": (0.96, 0.99),
    "amplitude_cutoff": (0.0, 0.09), "isolation_distance": (10.0, 150.0), "l_ratio": (0.0, 0.2),
    "d_prime": (1.0, 8.0), "nn_hit_rate": (0.5, 1.0), "nn_miss_rate": (0.0, 0.05), "max_drift": (5.0, 60.0),
    "cumulative_drift": (10.0, 400.0), "silhouette_score": (0.0, 0.3), "duration": (0.1, 1.0),
    "halfwidth": (0.1, 0.6), "PT_ratio": (0.2, 1.2), "repolarization_slope": (0.1, 1.0),
    "recovery_slope": (-0.3, 0.0), "amplitude": (50.0, 400.0), "spread": (20.0, 150.0),
    "velocity_above": (-1.0, 1.0), "velocity_below": (-1.0, 1.0), "snr": (1.0, 6.0),
}  # fmt: skip


@dataclass(frozen=True)
class ProbeSpec:
    """A probe as the session and LFP files describe it.

    Channels are listed in probe order: a channel's position in ``channel_ids`` is its local index,
    which also places it on the Neuropixels 1.0 checkerboard. The optional fields hold the
    warehouse's values; left out, a value is derived from the probe id (rates), left unknown (CCF
    coordinates are NaN), or drawn from the file's seed (unit metrics, all inside AllenSDK's
    default quality filters).
    """

    id: int
    name: str
    channel_ids: tuple[int, ...]
    structure_acronyms: tuple[str | None, ...]  # one per channel (None = unregistered)
    unit_ids: tuple[int, ...]
    unit_channel_ids: tuple[int, ...]  # channel id of each unit
    sampling_rate: float | None = None  # action-potential band, Hz
    lfp_sampling_rate: float | None = None  # rate of the samples in the probe's LFP file, Hz
    has_lfp_data: bool = True  # whether the probe has an LFP file
    # Per channel: (anterior-posterior, dorsal-ventral, left-right) CCF coordinates in microns.
    channel_ccf: tuple[tuple[float, float, float], ...] | None = None
    # Per unit: "quality" ("good" or "noise") and metrics named as in the warehouse's EcephysUnit
    # records (None = not computed). Mappings are not hashable, so this field stays out of the hash.
    unit_metrics: tuple[Mapping[str, Any], ...] | None = field(default=None, hash=False)

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
        if self.channel_ccf is not None and len(self.channel_ccf) != len(self.channel_ids):
            raise ValueError(
                f"probe {self.id}: {len(self.channel_ids)} channel ids but {len(self.channel_ccf)} CCF coordinates"
            )
        if self.unit_metrics is not None and len(self.unit_metrics) != len(self.unit_ids):
            raise ValueError(f"probe {self.id}: {len(self.unit_ids)} unit ids but {len(self.unit_metrics)} unit metrics")

    @property
    def rates(self) -> tuple[float, float]:
        """(sampling rate, LFP sampling rate) in Hz: the given ones, or fixed by the probe id.

        Derived from the id alone so the session file and the probe's LFP file, written with
        different seeds, state the same rates.
        """
        rate = self.sampling_rate
        if rate is None:
            jitter = float(_rng((0, self.id % 2**64), _RATES).normal(0.0, 0.05))
            rate = round(_AP_RATE + jitter, 6)
        lfp = self.lfp_sampling_rate if self.lfp_sampling_rate is not None else rate / _LFP_DECIMATION
        return float(rate), float(lfp)


@dataclass(frozen=True)
class Specimen:
    """The mouse of a session, as the session file's subject describes it."""

    specimen_id: int
    name: str  # e.g. "Sst-IRES-Cre;Ai32-386129"
    age_in_days: float
    sex: str  # "M" or "F"
    genotype: str  # full genotype, "wt/wt" for wild type
    strain: str = "C57BL/6J"
    species: str = "Mus musculus"


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
    session_type: str | None = None,
    specimen: Specimen | None = None,
) -> NwbLayout:
    """Write a session NWB file of about ``size`` bytes at ``path`` (overwriting it).

    ``session_type`` (``brain_observatory_1.1`` when None) and ``specimen`` (drawn from the seed
    when None) describe the session the way AllenSDK's session metadata reports it; the h5py
    backend leaves both out.
    """
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
        session_type=session_type or "brain_observatory_1.1",
        specimen=specimen if specimen is not None else _specimen(entropy, session_id),
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
    _, lfp_rate = probe.rates

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
                    t0 + np.arange(rows, dtype=np.float64) / lfp_rate,
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
                rate=lfp_rate,
            ),
        ),
        bulk=_Growth(
            data=f"/acquisition/{lfp}/{series}/data",
            stream=bulk,
            timestamps=f"/acquisition/{lfp}/{series}/timestamps",
            t0=t0,
            rate=lfp_rate,
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

    def layout(self) -> dict[str, Any]:
        """How to store it, as h5py's ``create_dataset`` and hdmf's ``H5DataIO`` both take it."""
        return {
            "chunks": self.chunks,
            "maxshape": (None, *self.data.shape[1:]) if self.growable else None,
            "compression": "gzip" if self.gzip else None,
            "shuffle": self.shuffle,
            "fletcher32": self.fletcher32,
        }


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
    session_type: str | None = None  # None: a file without session metadata (LFP files)
    specimen: Specimen | None = None

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
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _rng(entropy: tuple[int, int], *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*entropy, *stream]))


def _chunk_bytes(target: int) -> int:
    """Bulk chunk size: about 1/256 of the file, a power of two between 4 KiB and 1 MiB."""
    wanted = max(1, target // 256)
    return min(_MAX_CHUNK, max(_MIN_CHUNK, 1 << (wanted.bit_length() - 1)))


def _structure(backend: str, n_channels: int, n_units: int) -> int:
    """A rough guess at the bytes a file takes before its data (measured; see the table above)."""
    if backend == "pynwb":
        # The cached specification, the extension's tables and the units' metrics and waveforms.
        return 200 * _KIB + 130 * n_channels + 310 * n_units
    return 40 * _KIB + 130 * n_channels + 40 * n_units


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


@functools.cache
def _extension() -> tuple[Any, Any, Any, Any]:
    """A type map with the ecephys namespace, and its EcephysProbe, EcephysElectrodeGroup, EcephysSpecimen.

    The namespace goes into a copy of pynwb's type map rather than the process-wide one, so other
    pynwb users in the process see no new types, and the map pynwb copies whenever a container
    field is set (hdmf checks it for term sets) stays as small as it was. If the process already
    holds this namespace at the same version (AllenSDK loads its own on import), the copy keeps
    that one: the layout on disk is the same.
    """
    import pynwb

    type_map = pynwb.get_type_map(extensions=str(_EXTENSION_FILE))
    return (
        type_map,
        type_map.get_dt_container_cls("EcephysProbe", _EXTENSION),
        type_map.get_dt_container_cls("EcephysElectrodeGroup", _EXTENSION),
        type_map.get_dt_container_cls("EcephysSpecimen", _EXTENSION),
    )


def _write_pynwb(path: Path, content: _Content) -> None:
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from hdmf.build import BuildManager
    from hdmf.common import DynamicTable, ElementIdentifiers, VectorData, VectorIndex
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.ecephys import LFP, ElectricalSeries
    from pynwb.epoch import TimeIntervals
    from pynwb.misc import Units

    type_map, probe_type, group_type, specimen_type = _extension()

    def stored(array: _Array) -> Any:
        if array.chunks is None:
            return array.data
        return H5DataIO(data=array.data, **array.layout())

    def column(name: str, data: Any, *, description: str | None = None) -> Any:
        return VectorData(name=name, description=description or _COLUMNS[name], data=data)

    def packed(name: str, data: npt.NDArray[Any], *, description: str | None = None) -> Any:
        # Columns of few distinct values (ids repeated per probe, counters, flags) shrink to almost
        # nothing with gzip. A chunked dataset carries an index of a few KiB, so small columns
        # stay contiguous; one chunk holds a whole table of the usual size.
        if data.nbytes < _PACK_BYTES:
            return column(name, data, description=description)
        chunks = (min(len(data), 8192), *data.shape[1:])
        return column(name, H5DataIO(data=data, chunks=chunks, compression="gzip", shuffle=True), description=description)

    nwb = NWBFile(
        session_description=content.description,
        identifier=content.identifier,
        session_start_time=content.start_time,
        file_create_date=content.start_time,
        institution="Allen Institute for Brain Science",
        session_id=str(content.session_id),
        stimulus_notes=content.session_type,
    )
    if content.specimen is not None:
        specimen = content.specimen
        nwb.subject = specimen_type(
            subject_id=str(specimen.specimen_id),
            specimen_name=specimen.name,
            age_in_days=float(specimen.age_in_days),
            age=f"P{round(specimen.age_in_days)}D",
            sex=specimen.sex,
            genotype=specimen.genotype,
            strain=specimen.strain,
            species=specimen.species,
        )
    groups = {}
    for probe in content.probes:
        rate, lfp_rate = probe.rates
        device = probe_type(
            name=probe.name,
            description=_device_description(probe),
            manufacturer="imec",
            probe_id=probe.id,
            sampling_rate=rate,
        )
        nwb.add_device(device)
        groups[probe.name] = group_type(
            name=probe.name,
            description=_group_description(probe),
            location=_GROUP_LOCATION,
            device=device,
            probe_id=probe.id,
            has_lfp_data=probe.has_lfp_data,
            lfp_sampling_rate=lfp_rate,
        )
        nwb.add_electrode_group(groups[probe.name])
    if content.channel_ids.size:
        names = content.group_names
        channels = _channel_columns(content.probes)
        nwb.electrodes = DynamicTable(
            name="electrodes",
            description=_ELECTRODES,
            id=ElementIdentifiers(name="id", data=content.channel_ids),
            columns=[
                column("location", content.locations),
                column("group", [groups[n] for n in names]),
                column("group_name", names),
                *(packed(name, values) for name, values in channels.items()),
            ],
        )
    if content.unit_ids is not None and content.unit_ids.size:
        assert content.spike_times is not None and content.spike_index is not None
        spikes = column("spike_times", content.spike_times)
        amplitudes = column("spike_amplitudes", _spike_amplitudes(content.entropy, content.spike_times.size))
        waveforms, waveform_index = _mean_waveforms(content.entropy, content.unit_ids.size)
        waveform_mean = packed("waveform_mean", waveforms)
        nwb.units = Units(
            name="units",
            description=_UNITS,
            id=ElementIdentifiers(name="id", data=content.unit_ids),
            columns=[
                spikes,
                VectorIndex(name="spike_times_index", data=content.spike_index, target=spikes),
                column("peak_channel_id", content.peak_channel_ids),
                *(
                    (packed if values.dtype.kind == "i" else column)(name, values, description=text)
                    for name, (values, text) in _unit_columns(content).items()
                ),
                amplitudes,
                VectorIndex(name="spike_amplitudes_index", data=content.spike_index, target=amplitudes),
                waveform_mean,
                VectorIndex(name="waveform_mean_index", data=waveform_index, target=waveform_mean),
            ],
        )
    if content.session_type is not None:
        first = 0
        for name, description, values in _presentations(content.entropy):
            n = len(values["start_time"])
            nwb.add_time_intervals(
                TimeIntervals(
                    name=f"{name}_presentations",
                    description=description,
                    id=ElementIdentifiers(name="id", data=np.arange(first, first + n, dtype=np.int64)),
                    columns=[column(key, data, description=_COLUMNS[key]) for key, data in values.items()],
                )
            )
            first += n
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
        container._AbstractContainer__object_id = next(ids)
    nwb.all_children()  # rebuilds the id -> object index from the new ids
    with warnings.catch_warnings():
        # Callers write to a temporary name (``x.nwb.part``) and rename; pynwb's advice about the
        # extension does not apply to that name.
        warnings.filterwarnings("ignore", message="The file path provided: .* does not end in '.nwb'")
        io = NWBHDF5IO(str(path), "w", manager=BuildManager(type_map))
    with io:
        io.write(nwb)


# --------------------------------------------------------------------------- extension content


def _channel_columns(probes: Sequence[ProbeSpec]) -> dict[str, npt.NDArray[Any]]:
    """The electrode columns AllenSDK reads besides location and group, in probe order."""
    local = np.concatenate([np.arange(len(p.channel_ids), dtype=np.int64) for p in probes])
    ccf = np.concatenate(
        [
            np.asarray(p.channel_ccf, dtype=np.float64).reshape(-1, 3)
            if p.channel_ccf is not None
            else np.full((len(p.channel_ids), 3), np.nan)
            for p in probes
        ]
    )
    return {
        "probe_id": np.concatenate([np.full(len(p.channel_ids), p.id, dtype=np.int64) for p in probes]),
        "local_index": local,
        # Neuropixels 1.0: four staggered columns, two channels per 20 micron row.
        "probe_horizontal_position": np.array([43, 11, 59, 27], dtype=np.int64)[local % 4],
        "probe_vertical_position": 20 * (local // 2 + 1),
        "valid_data": np.ones(local.size, dtype=bool),
        "x": ccf[:, 0],
        "y": ccf[:, 1],
        "z": ccf[:, 2],
    }


def _unit_columns(content: _Content) -> dict[str, tuple[npt.NDArray[Any], str]]:
    """Per-unit columns besides spike times and peak channel: name -> (values, description).

    A probe's ``unit_metrics`` are used as given; a probe without them gets "good" units with
    metrics drawn from the file's seed, so the same arguments give the same values.
    """
    rng = _rng(content.entropy, _METRICS)
    local: list[npt.NDArray[np.int64]] = []
    quality: list[str] = []
    metrics: list[npt.NDArray[np.float64]] = []
    names = [warehouse for _, warehouse, _ in _UNIT_METRICS]
    for probe in content.probes:
        n = len(probe.unit_ids)
        local.append(np.arange(n, dtype=np.int64))
        if probe.unit_metrics is None:
            low, high = (np.array([_SYNTHETIC_METRICS[k][i] for k in names]) for i in (0, 1))
            metrics.append(np.round(rng.uniform(low, high, size=(n, len(names))), 6))
            quality += ["good"] * n
            continue
        for unit in probe.unit_metrics:
            quality.append(str(unit.get("quality", "good")))
        metrics.append(
            np.array(
                [[np.nan if unit.get(k) is None else float(unit[k]) for k in names] for unit in probe.unit_metrics],
                dtype=np.float64,
            ).reshape(n, len(names))
        )
    local_index = np.concatenate(local)
    table = np.concatenate(metrics)
    columns: dict[str, tuple[npt.NDArray[Any], str]] = {
        "local_index": (local_index, "index of the unit among its probe's units"),
        "cluster_id": (local_index.copy(), "the spike sorter's cluster id of the unit on its probe"),
        "quality": (np.array(quality, dtype=object), "'good', or 'noise' for clusters that are not units"),
    }
    for i, (name, _, description) in enumerate(_UNIT_METRICS):
        columns[name] = (table[:, i], description)
    return columns


def _spike_amplitudes(entropy: tuple[int, int], n: int) -> npt.NDArray[np.float32]:
    """One amplitude per spike, in volts (single precision: as many bytes as the spike times take otherwise)."""
    return _rng(entropy, _WAVEFORMS).uniform(5e-5, 4e-4, n).astype(np.float32)


def _mean_waveforms(entropy: tuple[int, int], n_units: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Each unit's mean waveform on one channel (volts), and the ragged index over the units.

    A fixed spike shape at one of sixteen amplitudes: the released files hold every channel's
    waveform, which would make the smallest session file several times larger; one row per unit
    keeps AllenSDK's reading path without that cost, and the repeated rows compress to little.
    """
    t = np.arange(_WAVEFORM_SAMPLES, dtype=np.float64)
    shape = -np.exp(-(((t - 20.0) / 2.5) ** 2)) + 0.35 * np.exp(-(((t - 32.0) / 7.0) ** 2))
    levels = _rng(entropy, _WAVEFORMS, 1).integers(1, 17, n_units)
    waveforms = (levels[:, None] * 1.5e-5 * shape[None, :]).astype(np.float32)
    return waveforms, np.arange(1, n_units + 1, dtype=np.int64)


def _presentations(entropy: tuple[int, int]) -> list[tuple[str, str, dict[str, npt.NDArray[Any]]]]:
    """A short stimulus table: (stimulus name, description, columns) per presentations table.

    Three blocks in the shape of the released tables (spontaneous activity, full-field flashes,
    drifting gratings), a few presentations each: enough for AllenSDK's stimulus table, its
    stimulus conditions and its session metadata, and cheap to write.
    """
    rng = _rng(entropy, _STIMULI)
    start = round(20.0 + float(rng.uniform(0.0, 10.0)), 5)

    def block(name: str, index: int, block_id: float, starts: npt.NDArray[np.floating[Any]], width: float) -> dict[str, Any]:
        n = starts.size
        return {
            "start_time": np.round(starts, 5),
            "stop_time": np.round(starts + width, 5),
            "stimulus_name": np.array([name] * n, dtype=object),
            "stimulus_block": np.full(n, block_id),
            "stimulus_index": np.full(n, index, dtype=np.int64),
        }

    spontaneous = block("spontaneous", 0, np.nan, np.array([start]), 60.0)
    flashes = block("flashes", 1, 1.0, start + 61.0 + 2.0 * np.arange(10), 0.25)
    flashes["color"] = np.array([("-1.0", "1.0")[int(c)] for c in rng.integers(0, 2, 10)], dtype=object)
    gratings = block("drifting_gratings", 2, 2.0, start + 85.0 + 3.0 * np.arange(15), 2.0)
    gratings["orientation"] = rng.choice(np.arange(0.0, 360.0, 45.0), 15)
    gratings["temporal_frequency"] = rng.choice(np.array([1.0, 2.0, 4.0, 8.0, 15.0]), 15)
    gratings["spatial_frequency"] = np.full(15, 0.04)
    gratings["contrast"] = np.full(15, 0.8)
    return [
        ("spontaneous", "presentation times of spontaneous activity (a grey screen)", spontaneous),
        ("flashes", "presentation times and colours of full-field flashes", flashes),
        ("drifting_gratings", "presentation times and parameters of drifting gratings", gratings),
    ]


def _specimen(entropy: tuple[int, int], session_id: int) -> Specimen:
    """A wild-type mouse drawn from the seed, for callers that do not say which mouse it was."""
    rng = _rng(entropy, _SUBJECT)
    specimen_id = session_id - int(rng.integers(15_000_000, 16_000_000))
    return Specimen(
        specimen_id=specimen_id,
        name=f"C57BL6J-{specimen_id % 1_000_000}",
        age_in_days=float(rng.integers(90, 150)),
        sex=("M", "F")[int(rng.integers(0, 2))],
        genotype="wt/wt",
    )


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
        return group.create_dataset(name, data=array.data, **array.layout())

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
            typed(group, "core", "ElectrodeGroup", description=_group_description(probe), location=_GROUP_LOCATION)
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
    "probe_id": "id of the probe the channel is on",
    "local_index": "index of the channel on its probe, from the tip",
    "probe_horizontal_position": "position of the channel across the probe (microns)",
    "probe_vertical_position": "position of the channel along the probe, from the tip (microns)",
    "valid_data": "whether the channel's data is usable",
    # The descriptions pynwb gives these three, as above.
    "x": "the x coordinate of the position (+x is posterior)",
    "y": "the y coordinate of the position (+y is inferior)",
    "z": "the z coordinate of the position (+z is right)",
    "spike_amplitudes": "amplitude of each spike (volts)",
    "waveform_mean": "mean waveform of the unit (volts): samples at the probe's sampling rate",
    "start_time": "start of the presentation (seconds)",
    "stop_time": "end of the presentation (seconds)",
    "stimulus_name": "the stimulus family",
    "stimulus_block": "index of the block of consecutive presentations of one stimulus",
    "stimulus_index": "index of the stimulus in the session's stimulus script",
    "color": "colour of the flash (-1 black, 1 white)",
    "orientation": "orientation of the grating (degrees)",
    "temporal_frequency": "temporal frequency of the grating (Hz)",
    "spatial_frequency": "spatial frequency of the grating (cycles/degree)",
    "contrast": "contrast of the grating",
}


def _device_description(probe: ProbeSpec) -> str:
    return f"Neuropixels probe {probe.id}"


def _group_description(probe: ProbeSpec) -> str:
    return f"channels of {probe.name} (probe {probe.id})"

"""The replica's NWB writer: real files of the size asked for, readable, damageable where promised."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ecephys_dl.replica.nwb import (
    NwbLayout,
    ProbeSpec,
    Region,
    Specimen,
    pynwb_available,
    write_lfp_nwb,
    write_session_nwb,
)

START = datetime(2019, 1, 9, 0, 26, 20, tzinfo=UTC)
SESSION_ID = 715093703
ROOT = Path(__file__).resolve().parents[1]
KIB = 1024
MIB = 1024 * 1024

needs_pynwb = pytest.mark.skipif(not pynwb_available(), reason="pynwb is not installed")
BACKENDS = [pytest.param("pynwb", marks=needs_pynwb), "h5py"]
KINDS = ["session", "lfp"]


def make_probes(n_probes: int = 2, n_channels: int = 8, n_units: int = 4) -> tuple[ProbeSpec, ...]:
    probes = []
    for p in range(n_probes):
        channels = tuple(849705558 + 1000 * p + c for c in range(n_channels))
        probes.append(
            ProbeSpec(
                id=810755797 + p,
                name=f"probe{'ABCDEF'[p]}",
                channel_ids=channels,
                # Every third channel unregistered, as in the warehouse's channel records.
                structure_acronyms=tuple(None if c % 3 == 0 else ("APN", "VISl")[c % 2] for c in range(n_channels)),
                unit_ids=tuple(915956282 + 1000 * p + u for u in range(n_units)),
                unit_channel_ids=tuple(channels[(2 * u) % n_channels] for u in range(n_units)),
            )
        )
    return tuple(probes)


PROBES = make_probes()


def write(kind: str, path: Path, *, size: int, backend: str, seed: int = 11) -> NwbLayout:
    if kind == "session":
        return write_session_nwb(
            path, session_id=SESSION_ID, probes=PROBES, size=size, seed=seed, start_time=START, backend=backend
        )
    return write_lfp_nwb(
        path, session_id=SESSION_ID, probe=PROBES[1], size=size, seed=seed, start_time=START, backend=backend
    )


def expected_identifier(kind: str) -> str:
    return str(SESSION_ID if kind == "session" else PROBES[1].id)


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def read_pynwb(path: Path, check: Callable[[Any], None]) -> list[warnings.WarningMessage]:
    """Read ``path`` with pynwb, run ``check`` on the NWBFile, return the warnings raised."""
    import pynwb

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pynwb.NWBHDF5IO(str(path), "r") as io:
            check(io.read())
    return [w for w in caught if issubclass(w.category, UserWarning)]


def datasets(path: Path) -> dict[str, h5py.Dataset]:
    found: dict[str, Any] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and not name.startswith("specifications"):
                found[name] = (obj.chunks, obj.compression, obj.fletcher32, obj.nbytes)

        f.visititems(visit)
    return found


# --------------------------------------------------------------------------- size


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [300 * KIB, 2 * MIB, 5 * MIB + 12345])
def test_size_is_within_tolerance(tmp_path: Path, kind: str, backend: str, size: int) -> None:
    """A file is within max(1 %, 16 KiB) of the size asked for, and the layout reports its real size."""
    path = tmp_path / "f.nwb"
    layout = write(kind, path, size=size, backend=backend)
    assert layout.path == path
    assert layout.backend == backend
    assert layout.size == os.path.getsize(path)
    assert abs(layout.size - size) <= max(size // 100, 16 * KIB), (layout.size, size)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_target_below_minimum_gives_the_smallest_file(tmp_path: Path, kind: str, backend: str) -> None:
    """Asking for fewer bytes than the layout needs writes the smallest file: one bulk chunk, same size for any such target."""
    tiny = write(kind, tmp_path / "a.nwb", size=1, backend=backend)
    zero = write(kind, tmp_path / "b.nwb", size=0, backend=backend)
    assert tiny.size == zero.size > 16 * KIB
    with h5py.File(tiny.path, "r") as f:
        assert f[tiny.fletcher32_chunk.dataset].id.get_num_chunks() == 1


# --------------------------------------------------------------------------- content


@needs_pynwb
@pytest.mark.parametrize("backend", BACKENDS)
def test_pynwb_reads_session_file(tmp_path: Path, backend: str) -> None:
    """pynwb reads a session file without warnings: identifier, electrode groups, electrodes, units."""
    layout = write("session", tmp_path / "s.nwb", size=400 * KIB, backend=backend)

    def check(nwb: Any) -> None:
        assert nwb.identifier == str(SESSION_ID)
        assert int(nwb.identifier) == SESSION_ID
        assert sorted(nwb.electrode_groups) == ["probeA", "probeB"]
        electrodes = nwb.electrodes
        assert list(electrodes.id[:]) == [c for p in PROBES for c in p.channel_ids]
        assert list(electrodes["location"][:]) == [s or "" for p in PROBES for s in p.structure_acronyms]
        assert [g.name for g in electrodes["group"][:]] == [p.name for p in PROBES for _ in p.channel_ids]
        units = nwb.units
        assert list(units.id[:]) == [u for p in PROBES for u in p.unit_ids]
        assert list(units["peak_channel_id"][:]) == [c for p in PROBES for c in p.unit_channel_ids]
        for i in range(len(units)):
            spikes = np.asarray(units["spike_times"][i])
            assert 3 <= spikes.size <= 8
            assert np.all(np.diff(spikes) >= 0)
        bulk = nwb.acquisition["running_wheel_signal_voltage"].data
        assert bulk.shape[0] * 4 > 0.5 * (layout.size - 300 * KIB)

    assert read_pynwb(layout.path, check) == []


@needs_pynwb
@pytest.mark.parametrize("backend", BACKENDS)
def test_pynwb_reads_lfp_file_as_allensdk_does(tmp_path: Path, backend: str) -> None:
    """An LFP file holds acquisition['probe_<P>_lfp'] with series 'probe_<P>_lfp_data' over all channels."""
    probe = PROBES[1]
    layout = write("lfp", tmp_path / "l.nwb", size=1 * MIB, backend=backend)

    def check(nwb: Any) -> None:
        assert nwb.identifier == str(probe.id)
        assert list(nwb.electrodes.id[:]) == list(probe.channel_ids)
        lfp = nwb.acquisition[f"probe_{probe.id}_lfp"]
        assert type(lfp).__name__ == "LFP"
        series = lfp.electrical_series[f"probe_{probe.id}_lfp_data"]
        n_samples, n_channels = series.data.shape
        assert n_channels == len(probe.channel_ids)
        assert n_samples * n_channels * 4 > 0.5 * MIB  # the LFP data is the bulk of the file
        timestamps = series.timestamps[:]
        assert timestamps.shape == (n_samples,)
        assert np.all(np.diff(timestamps) > 0)
        assert list(series.electrodes.data[:]) == list(range(len(probe.channel_ids)))
        assert series.electrodes.table.name == "electrodes"

    assert read_pynwb(layout.path, check) == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_h5py_opens_file_with_nwb_attributes(tmp_path: Path, kind: str, backend: str) -> None:
    """h5py opens either kind: root NWB attributes, and an identifier string that parses as the id."""
    layout = write(kind, tmp_path / "f.nwb", size=300 * KIB, backend=backend)
    with h5py.File(layout.path, "r") as f:
        assert f.attrs["nwb_version"] == "2.7.0"
        assert f.attrs["neurodata_type"] == "NWBFile"
        assert f.attrs["namespace"] == "core"
        assert f["identifier"][()].decode() == expected_identifier(kind)
        assert f["session_start_time"][()].decode() == START.isoformat()
        ids = f["general/extracellular_ephys/electrodes/id"][:]
    probes = PROBES if kind == "session" else PROBES[1:]
    assert list(ids) == [c for p in probes for c in p.channel_ids]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_file_has_gzip_fletcher32_and_contiguous_data(tmp_path: Path, kind: str, backend: str) -> None:
    """Each file holds a gzip chunked dataset, a fletcher32 chunked one and a contiguous uncompressed one."""
    found = datasets(write(kind, tmp_path / "f.nwb", size=300 * KIB, backend=backend).path)
    assert any(chunks and compression == "gzip" for chunks, compression, _, _ in found.values())
    assert any(chunks and fletcher for chunks, _, fletcher, _ in found.values())
    assert any(chunks is None and compression is None and nbytes >= 4 * KIB for chunks, compression, _, nbytes in found.values())


# --------------------------------------------------------------------------- AllenSDK's extension types

UNIT_METRIC_COLUMNS = [
    "firing_rate", "isi_violations", "presence_ratio", "amplitude_cutoff", "isolation_distance", "l_ratio",
    "d_prime", "nn_hit_rate", "nn_miss_rate", "max_drift", "cumulative_drift", "silhouette_score",
    "waveform_duration", "waveform_halfwidth", "PT_ratio", "repolarization_slope", "recovery_slope",
    "amplitude", "spread", "velocity_above", "velocity_below", "snr",
]  # fmt: skip
# The keyword arguments of AllenSDK's Unit: its reader passes every units column to it by name.
UNIT_KWARGS = {"id", "peak_channel_id", "local_index", "cluster_id", "quality", "spike_times", "spike_amplitudes",
               "waveform_mean", *UNIT_METRIC_COLUMNS}  # fmt: skip


def read_in_fresh_process(path: Path, script: str) -> str:
    """Run ``script`` with ``nwb`` bound to the file read by pynwb in a new interpreter, return its stdout.

    A new interpreter has never loaded the extension: it reads the types from the file's cached
    specification, as any other reader would.
    """
    code = textwrap.dedent(
        f"""
        import warnings
        warnings.simplefilter("error")  # any warning while reading fails the check
        import pynwb
        with pynwb.NWBHDF5IO({str(path)!r}, "r") as io:
            nwb = io.read()
        """
    ) + textwrap.dedent(script)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_pynwb
def test_session_file_carries_allensdk_probe_types(tmp_path: Path) -> None:
    """A reader that knows nothing of the extension gets EcephysProbe devices and EcephysElectrodeGroups with their attributes."""
    layout = write("session", tmp_path / "s.nwb", size=0, backend="pynwb")
    out = read_in_fresh_process(
        layout.path,
        """
        for name, group in sorted(nwb.electrode_groups.items()):
            device = group.device
            print(name, type(group).__name__, group.namespace, group.probe_id, bool(group.has_lfp_data),
                  round(group.lfp_sampling_rate, 3), group.location, type(device).__name__, device.probe_id,
                  round(device.sampling_rate, 3), device.manufacturer)
        """,
    )
    rows = [line.split() for line in out.splitlines()]
    assert [r[0] for r in rows] == ["probeA", "probeB"]
    for row, probe in zip(rows, PROBES, strict=True):
        rate, lfp_rate = probe.rates
        assert row[1:4] == ["EcephysElectrodeGroup", "ndx-aibs-ecephys", str(probe.id)]
        assert row[4] == "True"
        assert float(row[5]) == round(lfp_rate, 3)
        assert " ".join(row[6:9]) == "See electrode locations"
        assert row[9:11] == ["EcephysProbe", str(probe.id)]
        assert float(row[11]) == round(rate, 3) and abs(rate - 30_000) < 1 and abs(lfp_rate - 1250) < 0.1
        assert row[12] == "imec"


@needs_pynwb
def test_session_file_tables_have_allensdk_columns(tmp_path: Path) -> None:
    """Electrodes and units hold the columns AllenSDK reads; unit columns are exactly its Unit's arguments."""
    layout = write("session", tmp_path / "s.nwb", size=0, backend="pynwb")

    def check(nwb: Any) -> None:
        electrodes = nwb.electrodes.to_dataframe()
        for column in ["location", "group", "probe_id", "local_index", "probe_horizontal_position",
                       "probe_vertical_position", "valid_data", "x", "y", "z"]:  # fmt: skip
            assert column in electrodes.columns, column
        assert list(electrodes["probe_id"]) == [p.id for p in PROBES for _ in p.channel_ids]
        assert list(electrodes["local_index"]) == [i for p in PROBES for i in range(len(p.channel_ids))]
        assert list(electrodes["probe_horizontal_position"][:4]) == [43, 11, 59, 27]
        assert list(electrodes["probe_vertical_position"][:4]) == [20, 20, 40, 40]
        assert electrodes["valid_data"].all()
        assert electrodes[["x", "y", "z"]].isna().all().all()  # no CCF coordinates given

        units = nwb.units.to_dataframe().reset_index()
        assert set(units.columns) == UNIT_KWARGS
        assert list(units["local_index"]) == [i for p in PROBES for i in range(len(p.unit_ids))]
        assert set(units["quality"]) == {"good"}
        # Drawn metrics sit inside AllenSDK's default filters, so the session shows its units.
        assert (units["amplitude_cutoff"] <= 0.1).all() and (units["presence_ratio"] >= 0.95).all()
        assert (units["isi_violations"] <= 0.5).all()
        for _, unit in units.iterrows():
            assert np.asarray(unit["spike_amplitudes"]).shape == np.asarray(unit["spike_times"]).shape
            assert np.asarray(unit["waveform_mean"]).shape == (1, 82)

    assert read_pynwb(layout.path, check) == []


@needs_pynwb
def test_given_facts_are_written_as_given(tmp_path: Path) -> None:
    """Rates, LFP availability, CCF coordinates, unit metrics, session type and specimen passed in land in the file."""
    n_ch, n_units = 4, 3
    ccf = tuple((8000.0 + c, 3800.0 - c, 6800.0 + c) for c in range(n_ch))
    metrics = tuple(
        {"quality": ("good", "noise", "good")[u], "amplitude_cutoff": 0.1, "presence_ratio": 0.95,
         "isi_violations": None if u == 2 else 0.5, "duration": 0.25 + u, "halfwidth": 0.125, "snr": 3.0}
        for u in range(n_units)
    )  # fmt: skip
    probe = ProbeSpec(
        id=810755797, name="probeA", channel_ids=tuple(range(100, 100 + n_ch)), structure_acronyms=("CA1",) * n_ch,
        unit_ids=tuple(range(500, 500 + n_units)), unit_channel_ids=(100, 101, 102), sampling_rate=29999.94,
        lfp_sampling_rate=1249.9975, has_lfp_data=False, channel_ccf=ccf, unit_metrics=metrics,
    )  # fmt: skip
    specimen = Specimen(specimen_id=717038288, name="Sst-IRES-Cre;Ai32-386129", age_in_days=118.0, sex="M",
                        genotype="Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt")  # fmt: skip
    layout = write_session_nwb(
        tmp_path / "s.nwb", session_id=SESSION_ID, probes=(probe,), size=0, seed=3, start_time=START,
        backend="pynwb", session_type="functional_connectivity", specimen=specimen,
    )  # fmt: skip

    def check(nwb: Any) -> None:
        group = nwb.electrode_groups["probeA"]
        assert (group.device.sampling_rate, group.lfp_sampling_rate, bool(group.has_lfp_data)) == (29999.94, 1249.9975, False)
        electrodes = nwb.electrodes.to_dataframe()
        assert [tuple(r) for r in electrodes[["x", "y", "z"]].to_numpy()] == list(ccf)
        units = nwb.units.to_dataframe()
        assert list(units["quality"]) == ["good", "noise", "good"]
        assert list(units["amplitude_cutoff"]) == [0.1] * 3  # thresholds survive exactly
        assert units["isi_violations"].iloc[2] != units["isi_violations"].iloc[2]  # None is NaN
        assert list(units["waveform_duration"]) == [0.25, 1.25, 2.25]
        assert units["l_ratio"].isna().all()  # not given: not made up
        assert nwb.stimulus_notes == "functional_connectivity"
        subject = nwb.subject
        assert type(subject).__name__ == "EcephysSpecimen"
        assert (subject.specimen_name, subject.age_in_days, subject.subject_id) == (specimen.name, 118.0, "717038288")
        assert (subject.genotype, subject.sex, subject.age, subject.strain) == (specimen.genotype, "M", "P118D", "C57BL/6J")

    assert read_pynwb(layout.path, check) == []


@needs_pynwb
def test_session_file_has_a_stimulus_table(tmp_path: Path) -> None:
    """Presentation tables in /intervals, named <stimulus>_presentations, with the columns AllenSDK's stimulus table needs."""
    layout = write("session", tmp_path / "s.nwb", size=0, backend="pynwb")

    def check(nwb: Any) -> None:
        assert sorted(nwb.intervals) == ["drifting_gratings_presentations", "flashes_presentations", "spontaneous_presentations"]
        starts = []
        for name, table in nwb.intervals.items():
            frame = table.to_dataframe()
            assert {"start_time", "stop_time", "stimulus_name", "stimulus_block", "stimulus_index"} <= set(frame.columns)
            assert set(frame["stimulus_name"]) == {name.removesuffix("_presentations")}
            assert (frame["stop_time"] > frame["start_time"]).all()
            starts += list(frame["start_time"])
        assert len(starts) == len(set(starts)) > 10
        assert nwb.stimulus_notes == "brain_observatory_1.1"
        assert nwb.subject.specimen_name and nwb.subject.age_in_days > 0

    assert read_pynwb(layout.path, check) == []


@needs_pynwb
def test_lfp_file_states_the_rates_of_its_session_file(tmp_path: Path) -> None:
    """A probe's LFP file has the same extension group as the session file, and its timestamps step at its LFP rate."""
    probe = PROBES[1]
    layout = write("lfp", tmp_path / "l.nwb", size=300 * KIB, backend="pynwb")
    _, lfp_rate = probe.rates

    def check(nwb: Any) -> None:
        group = nwb.electrode_groups[probe.name]
        assert type(group).__name__ == "EcephysElectrodeGroup"
        assert (group.probe_id, group.lfp_sampling_rate) == (probe.id, lfp_rate)
        assert list(nwb.electrodes.to_dataframe()["probe_id"]) == [probe.id] * len(probe.channel_ids)
        timestamps = nwb.acquisition[f"probe_{probe.id}_lfp"].electrical_series[f"probe_{probe.id}_lfp_data"].timestamps[:]
        np.testing.assert_allclose(np.diff(timestamps), 1 / lfp_rate, rtol=1e-9)
        assert not nwb.intervals and nwb.subject is None and nwb.units is None

    assert read_pynwb(layout.path, check) == []


@needs_pynwb
def test_writing_leaves_the_process_type_map_alone(tmp_path: Path) -> None:
    """The extension goes into the writer's own type map: pynwb's process-wide map gains no ecephys types."""
    script = textwrap.dedent(
        f"""
        from datetime import datetime, timezone
        from pathlib import Path
        import pynwb
        from ecephys_dl.replica.nwb import ProbeSpec, write_session_nwb
        probe = ProbeSpec(id=7, name="probeA", channel_ids=(1, 2), structure_acronyms=("APN", None),
                          unit_ids=(5,), unit_channel_ids=(1,))
        write_session_nwb(Path({str(tmp_path / "s.nwb")!r}), session_id=1, probes=(probe,), size=0, seed=1,
                          start_time=datetime(2019, 1, 9, tzinfo=timezone.utc), backend="pynwb")
        print("ndx-aibs-ecephys" in pynwb.get_type_map().namespace_catalog.namespaces)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    assert done.stdout.split() == ["False"]


def test_namespace_files_ship_with_the_package() -> None:
    """The extension's namespace and types are package data next to the writer, and name the types AllenSDK reads."""
    import ecephys_dl.replica.nwb as module

    spec_dir = Path(module.__file__).with_name("nwb_spec")
    namespace = (spec_dir / "ndx-aibs-ecephys.namespace.yaml").read_text()
    types = (spec_dir / "ndx-aibs-ecephys.extensions.yaml").read_text()
    assert "name: ndx-aibs-ecephys" in namespace and "source: ndx-aibs-ecephys.extensions.yaml" in namespace
    for name in ["EcephysProbe", "EcephysElectrodeGroup", "EcephysSpecimen", "probe_id", "sampling_rate",
                 "lfp_sampling_rate", "has_lfp_data", "specimen_name", "age_in_days"]:  # fmt: skip
        assert name in types, name


def test_probe_rates_depend_on_the_probe_id_alone() -> None:
    """Derived rates are the same for every file that names the probe; given ones are kept."""
    a, b = make_probes()[0], make_probes()[0]
    assert a.rates == b.rates
    assert a.rates != make_probes()[1].rates
    given = ProbeSpec(id=1, name="probeA", channel_ids=(1,), structure_acronyms=(None,), unit_ids=(), unit_channel_ids=(),
                      sampling_rate=30000.5)  # fmt: skip
    assert given.rates == (30000.5, 30000.5 / 24)


# --------------------------------------------------------------------------- regions


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_raw_region_is_a_contiguous_dataset_whose_damage_stays_readable(tmp_path: Path, kind: str, backend: str) -> None:
    """Flipping a byte in raw_region keeps the file openable and changes exactly that dataset's data."""
    layout = write(kind, tmp_path / "f.nwb", size=600 * KIB, backend=backend)
    region = layout.raw_region
    with h5py.File(layout.path, "r") as f:
        dset = f[region.dataset]
        assert dset.chunks is None and dset.compression is None
        assert (region.offset, region.length) == (dset.id.get_offset(), dset.nbytes)
        before = dset[:]
    assert region.offset + region.length <= layout.size

    flip_byte(layout.path, region.offset + region.length // 2)
    with h5py.File(layout.path, "r") as f:
        after = f[region.dataset][:]
        assert f["identifier"][()].decode() == expected_identifier(kind)
    changed = np.flatnonzero(before.view(np.uint8) != after.view(np.uint8))
    assert list(changed) == [region.length // 2]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_damage_in_fletcher32_chunk_makes_reading_fail(tmp_path: Path, kind: str, backend: str) -> None:
    """Flipping a byte in fletcher32_chunk makes reading that dataset raise; the file still opens."""
    layout = write(kind, tmp_path / "f.nwb", size=600 * KIB, backend=backend)
    region = layout.fletcher32_chunk
    with h5py.File(layout.path, "r") as f:
        dset = f[region.dataset]
        assert dset.fletcher32
        assert dset.id.get_num_chunks() > 1
        offsets = {dset.id.get_chunk_info(i).byte_offset for i in range(dset.id.get_num_chunks())}
        assert region.offset in offsets
        dset[:]  # readable before the damage

    flip_byte(layout.path, region.offset + region.length // 3)
    with h5py.File(layout.path, "r") as f, pytest.raises(OSError):
        f[region.dataset][:]


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_the_same_bytes(tmp_path: Path, kind: str, backend: str) -> None:
    """The same arguments give byte-identical files; another seed changes the bulk data."""

    def digest(layout: NwbLayout) -> str:
        return hashlib.sha256(layout.path.read_bytes()).hexdigest()

    a = write(kind, tmp_path / "a.nwb", size=700 * KIB, backend=backend, seed=5)
    b = write(kind, tmp_path / "b.nwb", size=700 * KIB, backend=backend, seed=5)
    c = write(kind, tmp_path / "c.nwb", size=700 * KIB, backend=backend, seed=6)
    assert digest(a) == digest(b)
    assert (a.raw_region, a.fletcher32_chunk) == (b.raw_region, b.fletcher32_chunk)
    with h5py.File(a.path, "r") as fa, h5py.File(c.path, "r") as fc:
        path = a.fletcher32_chunk.dataset
        assert not np.array_equal(fa[path][:16], fc[path][:16])


@needs_pynwb
@pytest.mark.parametrize("kind", KINDS)
def test_backends_write_the_same_data(tmp_path: Path, kind: str) -> None:
    """pynwb and h5py backends store the same identifier, tables and bulk values (the bulk's length may differ)."""
    a = write(kind, tmp_path / "a.nwb", size=400 * KIB, backend="pynwb")
    b = write(kind, tmp_path / "b.nwb", size=400 * KIB, backend="h5py")
    tables = ["identifier", "general/extracellular_ephys/electrodes/id", "general/extracellular_ephys/electrodes/location"]
    if kind == "session":
        tables += ["units/id", "units/spike_times", "units/spike_times_index", "units/peak_channel_id"]
    with h5py.File(a.path, "r") as fa, h5py.File(b.path, "r") as fb:
        for path in tables:
            np.testing.assert_array_equal(fa[path][()], fb[path][()], err_msg=path)
        bulk = a.fletcher32_chunk.dataset
        n = min(fa[bulk].shape[0], fb[bulk].shape[0])
        assert n > 1000
        np.testing.assert_array_equal(fa[bulk][:n], fb[bulk][:n])


@pytest.mark.parametrize("kind", KINDS)
def test_bulk_values_do_not_depend_on_size(tmp_path: Path, kind: str) -> None:
    """A larger file's bulk dataset starts with the smaller file's bulk values."""
    small = write(kind, tmp_path / "a.nwb", size=200 * KIB, backend="h5py")
    large = write(kind, tmp_path / "b.nwb", size=3 * MIB, backend="h5py")
    with h5py.File(small.path, "r") as fs, h5py.File(large.path, "r") as fl:
        path = small.fletcher32_chunk.dataset
        head = fs[path][:]
        assert fl[path].shape[0] > 4 * head.shape[0]
        np.testing.assert_array_equal(fl[path][: head.shape[0]], head)


# --------------------------------------------------------------------------- arguments and limits


def test_rejects_inconsistent_probe_and_unknown_backend(tmp_path: Path) -> None:
    """Mismatched per-channel or per-unit tuples, an empty LFP probe and an unknown backend are refused."""
    with pytest.raises(ValueError, match="structure acronyms"):
        ProbeSpec(id=1, name="probeA", channel_ids=(1, 2), structure_acronyms=("APN",), unit_ids=(), unit_channel_ids=())
    with pytest.raises(ValueError, match="unit channel ids"):
        ProbeSpec(id=1, name="probeA", channel_ids=(1,), structure_acronyms=("APN",), unit_ids=(5,), unit_channel_ids=())
    with pytest.raises(ValueError, match="CCF coordinates"):
        ProbeSpec(id=1, name="probeA", channel_ids=(1,), structure_acronyms=("APN",), unit_ids=(), unit_channel_ids=(),
                  channel_ccf=())  # fmt: skip
    with pytest.raises(ValueError, match="unit metrics"):
        ProbeSpec(id=1, name="probeA", channel_ids=(1,), structure_acronyms=("APN",), unit_ids=(5,), unit_channel_ids=(1,),
                  unit_metrics=())  # fmt: skip
    empty = ProbeSpec(id=1, name="probeA", channel_ids=(), structure_acronyms=(), unit_ids=(), unit_channel_ids=())
    with pytest.raises(ValueError, match="no channels"):
        write_lfp_nwb(tmp_path / "l.nwb", session_id=1, probe=empty, size=0, seed=1, start_time=START, backend="h5py")
    with pytest.raises(ValueError, match="unknown NWB backend"):
        write("session", tmp_path / "s.nwb", size=0, backend="zarr")
    assert not (tmp_path / "l.nwb").exists() and not (tmp_path / "s.nwb").exists()


def test_without_pynwb_default_is_h5py_and_forcing_pynwb_is_a_clear_error(tmp_path: Path) -> None:
    """In an interpreter where pynwb cannot be imported, backend=None writes with h5py and 'pynwb' raises RuntimeError."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["pynwb"] = None  # makes `import pynwb` raise ImportError, as when it is not installed
        from datetime import datetime, timezone
        from pathlib import Path
        from ecephys_dl.replica.nwb import ProbeSpec, pynwb_available, write_lfp_nwb
        probe = ProbeSpec(id=7, name="probeA", channel_ids=(1, 2), structure_acronyms=("APN", None),
                          unit_ids=(), unit_channel_ids=())
        start = datetime(2019, 1, 9, tzinfo=timezone.utc)
        assert not pynwb_available()
        layout = write_lfp_nwb(Path({str(tmp_path / "l.nwb")!r}), session_id=1, probe=probe, size=0, seed=1,
                               start_time=start)
        print(layout.backend)
        try:
            write_lfp_nwb(Path({str(tmp_path / "m.nwb")!r}), session_id=1, probe=probe, size=0, seed=1,
                          start_time=start, backend="pynwb")
        except RuntimeError as exc:
            print(exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True, cwd=ROOT)
    backend, message = done.stdout.splitlines()
    assert backend == "h5py"
    assert "pynwb is not installed" in message
    assert not (tmp_path / "m.nwb").exists()


def test_memory_stays_flat_while_writing_a_large_file(tmp_path: Path) -> None:
    """Writing a 256 MiB file raises the peak RSS by far less than the file's size (slices, not whole arrays)."""
    path = tmp_path / "big.nwb"
    script = textwrap.dedent(
        f"""
        import resource
        from datetime import datetime, timezone
        from pathlib import Path
        from ecephys_dl.replica.nwb import ProbeSpec, write_lfp_nwb
        probe = ProbeSpec(id=7, name="probeA", channel_ids=tuple(range(96)), structure_acronyms=("CA1",) * 96,
                          unit_ids=(), unit_channel_ids=())
        start = datetime(2019, 1, 9, tzinfo=timezone.utc)
        write_lfp_nwb(Path({str(tmp_path / "warm.nwb")!r}), session_id=1, probe=probe, size=0, seed=1,
                      start_time=start, backend="h5py")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        layout = write_lfp_nwb(Path({str(path)!r}), session_id=1, probe=probe, size=256 * 2**20, seed=1,
                               start_time=start, backend="h5py")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(layout.size, (after - before) * 1024)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    size, growth = map(int, done.stdout.split())
    path.unlink()
    assert abs(size - 256 * MIB) <= 256 * MIB // 100
    assert growth < 100 * MIB, f"peak RSS grew by {growth / MIB:.0f} MiB"


def test_region_is_a_plain_fact() -> None:
    """Regions and probes are frozen values that compare by content."""
    assert Region("/a", 1, 2) == Region("/a", 1, 2)
    with pytest.raises(AttributeError):
        Region("/a", 1, 2).offset = 3  # type: ignore[misc]
    assert make_probes() == PROBES


@needs_pynwb
def test_temporary_name_without_nwb_extension_is_written_quietly(tmp_path: Path) -> None:
    """A caller's temporary name (``.nwb.part``) gets a normal file and no warning about the extension."""
    path = tmp_path / "s.nwb.part"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layout = write("session", path, size=0, backend="pynwb")
    assert [str(w.message) for w in caught] == []
    with h5py.File(layout.path, "r") as f:
        assert f["identifier"][()].decode() == str(SESSION_ID)

"""Generate a replica dataset: the warehouse's records, and the S3 bucket's files.

The dataset has the real one's shape (PROTOCOL.md §1) and is deterministic from a seed. At
``scale="full"`` the counts are the real ones: 58 sessions (32 ``brain_observatory_1.1``, 26
``functional_connectivity``), 332 probes (7 without an LFP file), 123,224 channels and 99,180
units of which 40,010 pass AllenSDK's default quality filters (21,842 and 18,168 by session type).
Smaller scales keep the proportions and every kind of case (both session types and sexes, every
genotype, a probe without LFP, units exactly at each filter threshold, "noise" units, channels
outside the brain).

The directory it writes::

    DIR/dataset.json              index: every S3 object's size, MD5, ETag, Last-Modified; downloads
    DIR/records/<Model>.json      warehouse records, one JSON array per model, sorted by id
    DIR/bucket/<key>              the bucket's objects: a whole AllenSDK cache under PREFIX
    DIR/published_files.csv       what the DANDI archive publishes of each NWB file (replica.dandi)

NWB files are written by :mod:`ecephys_dl.replica.nwb` (real NWB 2.x with pynwb when installed).
The metadata CSVs and ``manifest.json`` in the bucket are what AllenSDK itself writes, produced by
running the replica's own RMA queries over the records; the CSVs are written by
:mod:`ecephys_dl.replica.csvfiles`, not by the client's code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ecephys_dl import layout
from ecephys_dl.manifest import manifest_bytes
from ecephys_dl.replica import csvfiles, dandi

__all__ = [
    "BUCKET",
    "FORMAT",
    "PREFIX",
    "DatasetSummary",
    "generate_records",
    "make_dataset",
    "parse_scale",
]

FORMAT = "ecephys-dl-replica/1"
BUCKET = "allen-brain-observatory"
PREFIX = "visual-coding-neuropixels/ecephys-cache/"

# Real totals of the released dataset (PROTOCOL.md §1 and the tutorial).
FULL_SESSIONS = 58
FULL_BO_SESSIONS = 32
FULL_PROBES = 332
FULL_CHANNELS = 123_224
FULL_UNITS = 99_180
FULL_PASSING = {"brain_observatory_1.1": 21_842, "functional_connectivity": 18_168}
FULL_NO_LFP = 7
SCALES = {"full": FULL_SESSIONS, "small": 6, "tiny": 3}

BO, FC = layout.SESSION_TYPES
PUBLISHED_AT = "2019-10-03T00:00:00Z"
STIMULUS_PRODUCT_ID = 714914585
FILE_TYPES = {"EcephysNwb": 5, "EcephysLfpNwb": 6, "Stimulus": 7}

GENOTYPES = {
    "Sst": "Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt",
    "Vip": "Vip-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt",
    "Pvalb": "Pvalb-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt",
    "wt": "wt/wt",
}
SPECIMEN_PREFIX = {"Sst": "Sst-IRES-Cre;Ai32", "Vip": "Vip-IRES-Cre;Ai32", "Pvalb": "Pvalb-IRES-Cre;Ai32", "wt": "C57BL6J"}

# The tutorial's sessions come first, so the tutorial's examples work against the replica.
KNOWN_SESSIONS: tuple[tuple[int, str, str, str, int], ...] = (
    (715093703, BO, "M", "Sst", 118),
    (719161530, BO, "M", "Sst", 122),
    (721123822, BO, "M", "Pvalb", 125),
    (732592105, BO, "M", "wt", 100),
    (737581020, BO, "M", "wt", 108),
    (756029989, BO, "M", "Sst", 96),
)

# Allen CCF structure ids and acronyms.
STRUCTURES: dict[str, tuple[int, str]] = {
    "grey": (8, "Basic cell groups and regions"),
    "SCig": (10, "Superior colliculus, motor related, intermediate gray layer"),
    "VL": (81, "lateral ventricle"),
    "LGd": (170, "Dorsal part of the lateral geniculate complex"),
    "APN": (215, "Anterior pretectal nucleus"),
    "LP": (218, "Lateral posterior nucleus of the thalamus"),
    "MB": (313, "Midbrain"),
    "CA1": (382, "Field CA1"),
    "VISp": (385, "Primary visual area"),
    "VISam": (394, "Anteromedial visual area"),
    "VISal": (402, "Anterolateral visual area"),
    "VISl": (409, "Lateral visual area"),
    "VISrl": (417, "Rostrolateral visual area"),
    "CA2": (423, "Field CA2"),
    "CA3": (463, "Field CA3"),
    "SUB": (502, "Subiculum"),
    "VISpm": (533, "posteromedial visual area"),
    "TH": (549, "Thalamus"),
    "NOT": (628, "Nucleus of the optic tract"),
    "DG": (726, "Dentate gyrus"),
    "VPM": (733, "Ventral posteromedial nucleus of the thalamus"),
    "PO": (1020, "Posterior complex of the thalamus"),
    "POL": (1029, "Posterior limiting nucleus of the thalamus"),
    "PPT": (1061, "Posterior pretectal nucleus"),
    "VISmma": (480149258, "Mediomedial anterior visual area"),
    "Eth": (560581551, "Ethmoid nucleus of the thalamus"),
}
# Probe names and the cortical area each targets (the tutorial's list).
PROBE_TARGETS = {"probeA": "VISam", "probeB": "VISpm", "probeC": "VISp", "probeD": "VISl", "probeE": "VISal", "probeF": "VISrl"}
DEEP_STRUCTURES = ("LGd", "LP", "APN", "PO", "TH", "MB", "VPM", "NOT", "SCig", "Eth", "POL", "PPT")
HIPPOCAMPUS = ("DG", "CA3", "CA1", "CA2", "SUB")

UNIT_METRICS = (
    "PT_ratio", "amplitude", "amplitude_cutoff", "cumulative_drift", "d_prime", "duration",
    "firing_rate", "halfwidth", "isi_violations", "isolation_distance", "l_ratio", "max_drift",
    "nn_hit_rate", "nn_miss_rate", "presence_ratio", "recovery_slope", "repolarization_slope",
    "silhouette_score", "snr", "spread", "velocity_above", "velocity_below",
)  # fmt: skip
# Analysis-metric keys per session type; p_value_rf/on_screen_rf are stored swapped, as the warehouse has them.
ANALYSIS_KEYS = {
    BO: ("g_dsi_dg", "g_osi_dg", "pref_ori_dg", "pref_tf_dg", "run_mod_dg", "area_rf", "azimuth_rf",
         "elevation_rf", "p_value_rf", "on_screen_rf", "firing_rate_rf", "g_osi_sg", "pref_ori_sg",
         "pref_sf_sg", "image_selectivity_ns", "pref_image_ns", "firing_rate_fl", "on_off_ratio_fl"),
    FC: ("g_dsi_dg", "pref_ori_dg", "c50_dg", "fano_dg", "area_rf", "azimuth_rf", "elevation_rf",
         "p_value_rf", "on_screen_rf", "firing_rate_rf", "pref_dir_dm", "pref_speed_dm", "fano_dm",
         "firing_rate_fl", "on_off_ratio_fl"),
}  # fmt: skip
THRESHOLDS = {"amplitude_cutoff": 0.1, "presence_ratio": 0.95, "isi_violations": 0.5}


def parse_scale(scale: str | int) -> int:
    """Number of sessions for a scale name (full, small, tiny) or a count from 1 to 58."""
    if isinstance(scale, int) or str(scale).isdigit():
        n = int(scale)
        if not 1 <= n <= FULL_SESSIONS:
            raise ValueError(f"scale must be between 1 and {FULL_SESSIONS} sessions, not {n}")
        return n
    try:
        return SCALES[str(scale)]
    except KeyError:
        raise ValueError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)} or a number of sessions") from None


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`make_dataset` wrote."""

    path: Path
    sessions: int
    probes: int
    probes_without_lfp: int
    channels: int
    units: int
    passing_units: int
    objects: int
    bytes: int
    nwb_backend: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"dataset: {self.path}\n"
            f"sessions: {self.sessions}  probes: {self.probes} ({self.probes_without_lfp} without LFP)  "
            f"channels: {self.channels}  units: {self.units} ({self.passing_units} pass the default filters)\n"
            f"objects: {self.objects}  bytes: {self.bytes}  nwb: {self.nwb_backend}  time: {self.seconds:.1f} s"
        )


T = TypeVar("T")


@dataclass
class _ProbeLayout:
    """What the NWB files need to know of one probe beyond its record: its channels and units."""

    id: int
    name: str
    channel_ids: list[int]
    acronyms: list[str | None]
    has_lfp: bool
    lfp_file_id: int
    unit_ids: list[int]
    unit_channel_ids: list[int]


def _split(total: int, parts: int, low: int, high: int, rng: np.random.Generator) -> list[int]:
    """``parts`` integers in [low, high] drawn at random that add up to exactly ``total``."""
    if not low * parts <= total <= high * parts:
        raise ValueError(f"cannot split {total} into {parts} parts within [{low}, {high}]")
    values = rng.integers(low, high + 1, size=parts)
    diff = total - int(values.sum())
    order = rng.permutation(parts)
    i = 0
    while diff:
        k = order[i % parts]
        step = 1 if diff > 0 else -1
        if low <= values[k] + step <= high:
            values[k] += step
            diff -= step
        i += 1
    return [int(v) for v in values]


@dataclass
class _Build:
    """Records under construction, by model."""

    rng: np.random.Generator
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, model: str, record: dict[str, Any]) -> None:
        self.records.setdefault(model, []).append(record)


def _session_plan(n: int, rng: np.random.Generator) -> list[tuple[int, str, str, str, int]]:
    """(id, session type, sex, genotype key, age in days) for each session."""
    n_bo = FULL_BO_SESSIONS if n == FULL_SESSIONS else max(1, round(n * FULL_BO_SESSIONS / FULL_SESSIONS))
    if n >= 2:
        n_bo = min(n_bo, n - 1)
    known = [s for s in KNOWN_SESSIONS][: max(1, min(len(KNOWN_SESSIONS), n_bo - (n_bo // 3)))]
    plan: list[tuple[int, str, str, str, int]] = list(known)
    # The remaining sessions: cycle the genotypes and sexes so every combination shows up early.
    geno_cycle = ("Vip", "wt", "Pvalb", "wt", "Sst", "Vip", "wt", "Pvalb")
    next_id = 760000000
    i = 0
    while len(plan) < n:
        stype = BO if sum(1 for p in plan if p[1] == BO) < n_bo else FC
        next_id += int(rng.integers(2_000_000, 9_000_000))
        sex = "F" if i % 3 == 1 else "M"
        plan.append((next_id, stype, sex, geno_cycle[i % len(geno_cycle)], int(rng.integers(90, 150))))
        i += 1
    return sorted(plan)


def _build_records(n_sessions: int, seed: int) -> tuple[_Build, dict[int, list[_ProbeLayout]]]:
    rng = np.random.default_rng(seed)
    build = _Build(rng)
    full = n_sessions == FULL_SESSIONS
    plan = _session_plan(n_sessions, rng)

    for name, type_id in FILE_TYPES.items():
        build.add("WellKnownFileType", {"id": type_id, "name": name})
    for acronym, (sid, sname) in STRUCTURES.items():
        build.add("Structure", {"acronym": acronym, "id": sid, "name": sname})

    # Probe counts: 16 of 58 sessions have five probes, the rest six (332 in all).
    n_five = round(n_sessions * (6 * FULL_SESSIONS - FULL_PROBES) / FULL_SESSIONS)
    # The tutorial's sessions keep all six probes (its VISl example needs probeD); others may have five.
    known_ids = {k[0] for k in KNOWN_SESSIONS}
    others = [i for i, p in enumerate(plan) if p[0] not in known_ids]
    five = set(int(i) for i in rng.permutation(others)[:n_five]) if others else set()
    five |= set(range(n_sessions)[: max(0, n_five - len(five))])
    probes_per_session = [5 if i in five else 6 for i in range(n_sessions)]
    n_probes = sum(probes_per_session)
    n_channels = FULL_CHANNELS if full else round(n_probes * FULL_CHANNELS / FULL_PROBES)
    n_units = FULL_UNITS if full else round(n_probes * FULL_UNITS / FULL_PROBES)
    channels_per_probe = _split(n_channels, n_probes, 340, 384, rng)
    units_per_probe = _split(n_units, n_probes, 180, 420, rng)
    n_no_lfp = FULL_NO_LFP if full else max(1, round(n_probes * FULL_NO_LFP / FULL_PROBES))
    no_lfp = set(int(i) for i in rng.choice(n_probes, size=n_no_lfp, replace=False))
    # One probe in about fifteen was never registered to the CCF: no structures, -1000 coordinates.
    unregistered = set(int(i) for i in rng.choice(n_probes, size=max(1, n_probes // 15), replace=False))

    probe_index = 0
    channel_id = 849_700_000
    unit_id = 915_900_000
    units_by_session: dict[int, list[dict[str, Any]]] = {}
    probe_specs: dict[int, list[_ProbeLayout]] = {}
    base_date = datetime(2019, 1, 9, 0, 26, 20, tzinfo=UTC)
    wild_type_donors = 0
    for s_index, ((session_id, stype, sex, geno, age), n_probe) in enumerate(zip(plan, probes_per_session, strict=True)):
        specimen_id = session_id - 15_000_000 - int(rng.integers(0, 999))
        donor_id = specimen_id - 1
        age_id = 1_000 + age
        acquired = base_date + timedelta(days=int(rng.integers(0, 280)), seconds=int(rng.integers(0, 86_400)))
        build.add(
            "EcephysSession",
            {
                "date_of_acquisition": acquired.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "fail_eye_tracking": bool(rng.random() < 0.1),
                "id": session_id,
                "isi_experiment_id": session_id - 2_497_998 - int(rng.integers(0, 999)),
                "published_at": PUBLISHED_AT,
                "specimen_id": specimen_id,
                "stimulus_name": stype,
            },
        )
        build.add("Specimen", {"donor_id": donor_id, "id": specimen_id, "name": f"{SPECIMEN_PREFIX[geno]}-{specimen_id % 1_000_000}"})
        # Some wild-type donors have no genotype on record at all: AllenSDK shows them as "wt".
        genotype: str | None = GENOTYPES[geno]
        if geno == "wt":
            if wild_type_donors % 4 == 0:
                genotype = None
            wild_type_donors += 1
        build.add("Donor", {"age_id": age_id, "full_genotype": genotype, "id": donor_id, "sex": sex})
        if age_id not in {a["id"] for a in build.records.get("DonorAge", [])}:
            build.add("DonorAge", {"days": age, "id": age_id, "name": f"P{age}"})

        session_file_id = 1_026_124_469 + 20 * s_index
        build.add("WellKnownFile", _wkf(session_file_id, "EcephysSession", session_id, "EcephysNwb", f"ecephys_session_{session_id}/{session_id}.nwb"))
        names = list(PROBE_TARGETS)
        if n_probe == 5:
            names.pop(int(rng.integers(0, 6)))
        phase = "3a" if s_index < n_sessions // 3 else "PXI"
        first_probe_id = session_id + 13_351_945 + 2 * int(rng.integers(0, 50))
        units_by_session[session_id] = []
        probe_specs[session_id] = []
        for p_index, name in enumerate(names):
            probe_id = first_probe_id + 2 * p_index
            sampling = 30_000.0 + float(rng.normal(0, 0.05))
            has_lfp = probe_index not in no_lfp
            build.add(
                "EcephysProbe",
                {
                    "air_channel_index": int(rng.integers(370, 385)),
                    "ecephys_session_id": session_id,
                    "id": probe_id,
                    "lfp_sampling_rate": round(sampling / 12.0, 6),
                    "lfp_temporal_subsampling_factor": 2.0,
                    "name": name,
                    "phase": phase,
                    "sampling_rate": round(sampling, 6),
                    "surface_channel_index": int(rng.integers(330, 370)),
                    "use_lfp_data": has_lfp,
                },
            )
            if has_lfp:
                build.add("WellKnownFile", _wkf(session_file_id + 12 + p_index, "EcephysProbe", probe_id, "EcephysLfpNwb", f"ecephys_session_{session_id}/probe_{probe_id}_lfp.nwb"))
            n_ch = channels_per_probe[probe_index]
            acronyms = _probe_structures(name, n_ch, probe_index in unregistered, rng)
            channel_ids: list[int] = []
            for local_index, structure in enumerate(acronyms):
                channel_id += 2
                channel_ids.append(channel_id)
                registered = probe_index not in unregistered
                build.add(
                    "EcephysChannel",
                    {
                        "anterior_posterior_ccf_coordinate": float(8000 + int(rng.integers(0, 1500))) if registered else -1000.0,
                        "dorsal_ventral_ccf_coordinate": float(3800 - 10 * local_index + int(rng.integers(0, 9))) if registered else -1000.0,
                        "ecephys_probe_id": probe_id,
                        "ecephys_structure_id": STRUCTURES[structure][0] if structure else None,
                        "id": channel_id,
                        "left_right_ccf_coordinate": float(6800 + int(rng.integers(0, 1500))) if registered else -1000.0,
                        "local_index": local_index,
                        "probe_horizontal_position": (43, 11, 59, 27)[local_index % 4],
                        "probe_vertical_position": 20 * (local_index // 2 + 1),
                    },
                )
            n_u = units_per_probe[probe_index]
            unit_channels = sorted(int(c) for c in rng.choice(channel_ids, size=n_u, replace=True))
            spec = _ProbeLayout(id=probe_id, name=name, channel_ids=channel_ids, acronyms=acronyms, has_lfp=has_lfp,
                                lfp_file_id=session_file_id + 12 + p_index, unit_ids=[], unit_channel_ids=unit_channels)
            for ch in unit_channels:
                unit_id += 1 + int(rng.integers(0, 3))
                spec.unit_ids.append(unit_id)
                units_by_session[session_id].append({"id": unit_id, "ecephys_channel_id": ch, "_type": stype})
            probe_specs[session_id].append(spec)
            probe_index += 1

    _add_units(build, plan, units_by_session, full)
    _add_stimulus_templates(build)
    for model in build.records:
        build.records[model].sort(key=lambda r: r["id"])
    return build, probe_specs


def generate_records(scale: str | int = "small", seed: int = 1) -> dict[str, list[dict[str, Any]]]:
    """The warehouse records of a dataset (no files), by model, each list sorted by id."""
    return _build_records(parse_scale(scale), seed)[0].records


def _wkf(file_id: int, attachable_type: str, attachable_id: int, type_name: str, internal: str) -> dict[str, Any]:
    return {
        "attachable_id": attachable_id,
        "attachable_type": attachable_type,
        "download_link": f"/api/v2/well_known_file_download/{file_id}",
        "id": file_id,
        "path": f"/external/mindscope/production/neuropixels/prod0/{internal}",
        "well_known_file_type_id": FILE_TYPES[type_name],
    }


def _probe_structures(name: str, n: int, unregistered: bool, rng: np.random.Generator) -> list[str | None]:
    """Structure acronyms from the tip (local index 0) upward: thalamus, hippocampus, cortex, outside."""
    if unregistered:
        return [None] * n
    outside = int(rng.integers(20, 45))
    cortex = int(rng.integers(60, 100))
    hippo = int(rng.integers(60, 100))
    deep = max(0, n - outside - cortex - hippo)
    acronyms: list[str | None] = []
    deep_names = [str(s) for s in rng.choice(DEEP_STRUCTURES, size=2, replace=False)]
    acronyms += [deep_names[0]] * (deep // 2) + [deep_names[1]] * (deep - deep // 2)
    hippo_names = ["DG", "CA3" if rng.random() < 0.5 else "CA2", "CA1"]
    acronyms += [hippo_names[min(2, 3 * i // max(1, hippo))] for i in range(hippo)]
    if rng.random() < 0.3:
        acronyms[-1:] = ["grey"]
    acronyms += [PROBE_TARGETS[name]] * cortex
    acronyms += [None] * outside
    return acronyms[:n]


def _add_units(build: _Build, plan: Sequence[tuple[int, str, str, str, int]], units_by_session: Mapping[int, list[dict[str, Any]]], full: bool) -> None:
    """Unit records with quality metrics on both sides of the default filters, and metric bundles."""
    rng = build.rng
    bundle_id = 950_000_000
    for stype in (BO, FC):
        units = [u for s in plan if s[1] == stype for u in units_by_session[s[0]]]
        if not units:
            continue
        target = FULL_PASSING[stype] if full else round(len(units) * sum(FULL_PASSING.values()) / FULL_UNITS)
        passing = set(int(i) for i in rng.choice(len(units), size=min(target, len(units)), replace=False))
        boundary = 0
        failure = 0
        for i, unit in enumerate(units):
            metrics = _unit_metrics(rng)
            quality = "good"
            if i in passing:
                # The first passing units sit exactly on each threshold: inclusive filters keep them.
                if boundary < 3:
                    name = ("amplitude_cutoff", "presence_ratio", "isi_violations")[boundary]
                    metrics[name] = THRESHOLDS[name]
                    boundary += 1
            else:
                failure += 1
                mode = failure % 6
                if mode == 0:
                    metrics["amplitude_cutoff"] = round(0.1 + float(rng.uniform(0.0001, 0.4)), 6)
                elif mode == 1:
                    metrics["presence_ratio"] = round(0.95 - float(rng.uniform(0.0001, 0.6)), 6)
                elif mode == 2:
                    metrics["isi_violations"] = round(0.5 + float(rng.uniform(0.0001, 3.0)), 6)
                elif mode == 3:
                    quality = "noise"
                elif mode == 4:
                    metrics["amplitude_cutoff"] = 0.5  # AllenSDK's cap for units it could not fit
                    metrics["presence_ratio"] = round(float(rng.uniform(0.5, 0.94)), 6)
                else:
                    metrics["isi_violations"] = None  # a missing metric never passes a filter
            record = {"ecephys_channel_id": unit["ecephys_channel_id"], "id": unit["id"], "quality": quality,
                      "epoch_name_quality_metrics": "complete_session", "epoch_name_waveform_metrics": "complete_session"}
            record.update(metrics)
            build.add("EcephysUnit", dict(sorted(record.items())))
            bundle_id += 1
            build.add("EcephysUnitMetricBundle", {"data": _analysis_blob(stype, rng), "ecephys_unit_id": unit["id"], "id": bundle_id})


def _unit_metrics(rng: np.random.Generator) -> dict[str, float | None]:
    """Quality and waveform metrics of a unit that passes every default filter."""
    values = {
        "PT_ratio": rng.uniform(0.2, 1.2), "amplitude": rng.uniform(50, 400), "amplitude_cutoff": rng.uniform(0.0, 0.0999),
        "cumulative_drift": rng.uniform(10, 400), "d_prime": rng.uniform(1, 8), "duration": rng.uniform(0.1, 1.0),
        "firing_rate": rng.uniform(0.1, 40), "halfwidth": rng.uniform(0.1, 0.6), "isi_violations": rng.uniform(0.0, 0.4999),
        "isolation_distance": rng.uniform(10, 150), "l_ratio": rng.uniform(0, 0.2), "max_drift": rng.uniform(5, 60),
        "nn_hit_rate": rng.uniform(0.5, 1.0), "nn_miss_rate": rng.uniform(0, 0.05), "presence_ratio": rng.uniform(0.9501, 0.99),
        "recovery_slope": rng.uniform(-0.3, 0.0), "repolarization_slope": rng.uniform(0.1, 1.0), "silhouette_score": rng.uniform(0, 0.3),
        "snr": rng.uniform(1, 6), "spread": rng.uniform(20, 150), "velocity_above": rng.uniform(-1, 1), "velocity_below": rng.uniform(-1, 1),
    }  # fmt: skip
    return {k: round(float(v), 6) for k, v in values.items()}


def _analysis_blob(stype: str, rng: np.random.Generator) -> str:
    data: dict[str, Any] = {}
    for key in ANALYSIS_KEYS[stype]:
        if key == "p_value_rf":
            data[key] = bool(rng.random() < 0.6)  # swapped: holds on_screen_rf's value
        elif key == "on_screen_rf":
            data[key] = round(float(rng.uniform(0, 1)), 6)  # swapped: holds p_value_rf's value
        elif key.startswith("pref_"):
            data[key] = float(rng.choice([0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0]))
        elif rng.random() < 0.05:
            data[key] = None
        else:
            data[key] = round(float(rng.uniform(0, 1)), 6)
    return json.dumps(data)


def _add_stimulus_templates(build: _Build) -> None:
    for kind, number, file_id in (("natural_movie", 1, 1_026_124_300), ("natural_movie", 3, 1_026_124_301),
                                  ("natural_scene", 0, 1_026_124_310), ("natural_scene", 1, 1_026_124_311)):  # fmt: skip
        ext = "npy" if kind == "natural_movie" else "tiff"
        build.add("WellKnownFile", _wkf(file_id, "Product", STIMULUS_PRODUCT_ID, "Stimulus", f"stimulus_templates/{kind}_{number}.{ext}"))


# --------------------------------------------------------------------------------------------- files


def _records_view(build: _Build) -> Any:
    def records(model: str) -> list[dict[str, Any]]:
        return build.records[model]

    return records


def _query_all(q: str, records: Any) -> list[dict[str, Any]]:
    """Every record a warehouse query returns, read page by page as a client would."""
    from ecephys_dl.replica.query import execute

    rows: list[dict[str, Any]] = []
    start = 0
    while True:
        page = execute(f"{q},rma::options[start_row$eq{start}][num_rows$eq50000][order$eq'id']", records)
        rows.extend(page["msg"])
        start += page["num_rows"]
        if start >= page["total_rows"] or not page["num_rows"]:
            return rows


QUERIES = {
    "sessions": "criteria=model::EcephysSession,rma::include,specimen(donor(age)),well_known_files(well_known_file_type)",
    "probes": "criteria=model::EcephysProbe",
    "channels": "criteria=model::EcephysChannel,rma::include,structure,rma::options[tabular$eq'ecephys_channels.id,ecephys_probe_id,local_index,probe_horizontal_position,probe_vertical_position,anterior_posterior_ccf_coordinate,dorsal_ventral_ccf_coordinate,left_right_ccf_coordinate,structures.id as ecephys_structure_id,structures.acronym as ecephys_structure_acronym']",
    "units": "criteria=model::EcephysUnit",
}


def _write_metadata(build: _Build, cache: Path) -> None:
    """The bucket's CSVs and manifest.json, as AllenSDK writes them from the warehouse's answers."""
    records = _records_view(build)
    layout_ = layout.CacheLayout(cache)
    writers = {
        "sessions": csvfiles.sessions_csv,
        "probes": csvfiles.probes_csv,
        "channels": csvfiles.channels_csv,
        "units": csvfiles.units_csv,
    }
    for name, write in writers.items():
        layout.write_atomic(layout_.table(name), write(_query_all(QUERIES[name], records)))
    layout.write_atomic(layout_.manifest, manifest_bytes())

    sessions = {s["id"]: s["stimulus_name"] for s in build.records["EcephysSession"]}
    probe_session = {p["id"]: p["ecephys_session_id"] for p in build.records["EcephysProbe"]}
    channel_probe = {c["id"]: c["ecephys_probe_id"] for c in build.records["EcephysChannel"]}
    unit_session = {u["id"]: probe_session[channel_probe[u["ecephys_channel_id"]]] for u in build.records["EcephysUnit"]}
    by_type: dict[str, list[dict[str, Any]]] = {}
    by_session: dict[int, list[dict[str, Any]]] = {}
    for bundle in build.records["EcephysUnitMetricBundle"]:
        session_id = unit_session[bundle["ecephys_unit_id"]]
        by_type.setdefault(sessions[session_id], []).append(bundle)
        by_session.setdefault(session_id, []).append(bundle)
    for stype, bundles in by_type.items():
        layout.write_atomic(layout_.typewise_metrics(stype), csvfiles.metrics_csv(bundles))
    for session_id, bundles in by_session.items():
        layout.write_atomic(layout_.session_metrics(session_id), csvfiles.metrics_csv(bundles))


def _write_templates(cache: Path, seed: int) -> None:
    rng = np.random.default_rng(seed + 7)
    layout_ = layout.CacheLayout(cache)
    for number in (1, 3):
        import io

        buffer = io.BytesIO()
        np.save(buffer, rng.integers(0, 255, size=(4, 12, 16), dtype=np.uint8))
        layout.write_atomic(layout_.natural_movie(number), buffer.getvalue())
    for number in (0, 1):
        layout.write_atomic(layout_.natural_scene(number), _tiny_tiff(rng.integers(0, 255, size=(8, 8), dtype=np.uint8)))


def _tiny_tiff(pixels: np.ndarray) -> bytes:
    """A minimal uncompressed 8-bit greyscale TIFF."""
    height, width = pixels.shape
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 3, 1, height), (279, 4, 1, width * height)]  # fmt: skip
    data = pixels.astype(np.uint8).tobytes()
    ifd_offset = 8 + len(data)
    out = bytearray(b"II*\x00" + ifd_offset.to_bytes(4, "little") + data)
    out += len(entries).to_bytes(2, "little")
    for tag, typ, count, value in entries:
        out += tag.to_bytes(2, "little") + typ.to_bytes(2, "little") + count.to_bytes(4, "little") + value.to_bytes(4, "little")
    out += (0).to_bytes(4, "little")
    return bytes(out)


def _write_nwb_files(build: _Build, probe_specs: Mapping[int, list[_ProbeLayout]], cache: Path, file_size: int, seed: int, backend: str | None) -> tuple[str, dict[int, str]]:
    from ecephys_dl.replica import nwb

    rng = np.random.default_rng(seed + 1)
    layout_ = layout.CacheLayout(cache)
    downloads: dict[int, str] = {}
    used = "h5py"
    session_files = {f["attachable_id"]: f["id"] for f in build.records["WellKnownFile"] if f["attachable_type"] == "EcephysSession"}
    # The files carry the warehouse's own values, so AllenSDK's session objects agree with its tables.
    probes = {p["id"]: p for p in build.records["EcephysProbe"]}
    channels = {c["id"]: c for c in build.records["EcephysChannel"]}
    units = {u["id"]: u for u in build.records["EcephysUnit"]}
    specimens = {s["id"]: s for s in build.records["Specimen"]}
    donors = {d["id"]: d for d in build.records["Donor"]}
    ages = {a["id"]: a for a in build.records["DonorAge"]}

    def ccf(channel_id: int) -> tuple[float, float, float]:
        channel = channels[channel_id]
        return (float(channel["anterior_posterior_ccf_coordinate"]), float(channel["dorsal_ventral_ccf_coordinate"]),
                float(channel["left_right_ccf_coordinate"]))  # fmt: skip

    for session in build.records["EcephysSession"]:
        session_id = session["id"]
        start = datetime.strptime(session["date_of_acquisition"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        specs = [
            nwb.ProbeSpec(id=p.id, name=p.name, channel_ids=tuple(p.channel_ids), structure_acronyms=tuple(p.acronyms),
                          unit_ids=tuple(p.unit_ids), unit_channel_ids=tuple(p.unit_channel_ids),
                          sampling_rate=probes[p.id]["sampling_rate"],
                          lfp_sampling_rate=probes[p.id]["lfp_sampling_rate"] / probes[p.id]["lfp_temporal_subsampling_factor"],
                          has_lfp_data=p.has_lfp,
                          channel_ccf=tuple(ccf(c) for c in p.channel_ids),
                          unit_metrics=tuple(units[u] for u in p.unit_ids))
            for p in probe_specs[session_id]
        ]  # fmt: skip
        specimen_record = specimens[session["specimen_id"]]
        donor = donors[specimen_record["donor_id"]]
        specimen = nwb.Specimen(specimen_id=specimen_record["id"], name=specimen_record["name"], age_in_days=float(ages[donor["age_id"]]["days"]),
                                sex=donor["sex"], genotype=donor["full_genotype"] or "wt/wt")  # fmt: skip
        path = layout_.session_nwb(session_id)
        size = int(file_size * rng.uniform(0.52, 1.0))
        result = _atomic_nwb(path, functools.partial(nwb.write_session_nwb, session_id=session_id, probes=specs, size=size, seed=seed + session_id % 100_000,
                                                     start_time=start, backend=backend, session_type=session["stimulus_name"], specimen=specimen))  # fmt: skip
        used = result.backend
        downloads[session_files[session_id]] = PREFIX + layout_.relative(path)
        for spec, raw in zip(specs, probe_specs[session_id], strict=True):
            if not raw.has_lfp:
                continue
            path = layout_.probe_lfp_nwb(session_id, spec.id)
            size = int(file_size * rng.uniform(0.27, 0.82))
            _atomic_nwb(path, functools.partial(nwb.write_lfp_nwb, session_id=session_id, probe=spec, size=size, seed=seed + spec.id % 100_000, start_time=start, backend=backend))
            downloads[raw.lfp_file_id] = PREFIX + layout_.relative(path)
    return used, downloads


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _published_files(build: _Build, probe_specs: Mapping[int, list[_ProbeLayout]], cache: Path, seed: int) -> bytes:
    """``published_files.csv``: each NWB file's size, digests and place in its dandiset."""
    layout_ = layout.CacheLayout(cache)
    files: list[dandi.PublishedFile] = []
    for session in build.records["EcephysSession"]:
        session_id, specimen_id = session["id"], session["specimen_id"]
        dandiset = dandi.DANDISETS[session["stimulus_name"]]
        nwb_files: list[tuple[int | None, Path]] = [(None, layout_.session_nwb(session_id))]
        nwb_files += [(p.id, layout_.probe_lfp_nwb(session_id, p.id)) for p in probe_specs[session_id] if p.has_lfp]
        for probe_id, path in nwb_files:
            dandi_path = dandi.dandi_path(specimen_id, session_id, probe_id)
            files.append(
                dandi.PublishedFile(
                    kind="session" if probe_id is None else "lfp",
                    session_id=session_id,
                    probe_id=probe_id,
                    cache_path=layout_.relative(path),
                    size=path.stat().st_size,
                    sha256=_sha256(path),
                    dandi_etag=dandi.dandi_etag(path),
                    dandiset=dandiset,
                    dandi_asset_id=dandi.asset_id(seed, dandi_path),
                    dandi_path=dandi_path,
                )
            )
    return dandi.published_csv(files)


def _atomic_nwb(path: Path, write: Callable[[Path], T]) -> T:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        result = write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def _iter_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_dataset(
    path: Path,
    *,
    scale: str | int = "small",
    file_size: int = 256 * 1024,
    seed: int = 1,
    part_size: int = 8 * 1024 * 1024,
    backend: str | None = None,
    force: bool = False,
) -> DatasetSummary:
    """Write a replica dataset into ``path`` (which must be empty, or a dataset when ``force``)."""
    from ecephys_dl.replica.s3 import s3_etag

    started = time.monotonic()
    n_sessions = parse_scale(scale)
    if file_size <= 0 or part_size <= 0:
        raise ValueError("file size and part size must be positive")
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not (path / "dataset.json").is_file():
            raise FileExistsError(f"{path} is not empty and holds no replica dataset: choose an empty or new directory")
        if not force:
            raise FileExistsError(f"{path} already holds a replica dataset: pass force=True (--force) to write it again")
        for name in ("records", "bucket"):
            shutil.rmtree(path / name, ignore_errors=True)
        (path / dandi.PUBLISHED_TABLE).unlink(missing_ok=True)
        (path / "dataset.json").unlink()
    path.mkdir(parents=True, exist_ok=True)

    build, probe_specs = _build_records(n_sessions, seed)
    cache = path / "bucket" / PREFIX.rstrip("/")
    _write_metadata(build, cache)
    _write_templates(cache, seed)
    used_backend, downloads = _write_nwb_files(build, probe_specs, cache, file_size, seed, backend)
    cache_key = {f["id"]: f for f in build.records["WellKnownFile"]}
    for file_id, record in cache_key.items():
        if record["attachable_type"] == "Product":
            name = record["path"].rsplit("/", 1)[1]
            kind, number = name.rsplit(".", 1)[0].rsplit("_", 1)
            target = layout.CacheLayout(cache).natural_movie(int(number)) if kind == "natural_movie" else layout.CacheLayout(cache).natural_scene(int(number))
            downloads[file_id] = PREFIX + layout.CacheLayout(cache).relative(target)

    layout.write_atomic(path / dandi.PUBLISHED_TABLE, _published_files(build, probe_specs, cache, seed))

    records_dir = path / "records"
    records_dir.mkdir()
    for model, rows in build.records.items():
        layout.write_atomic(records_dir / f"{model}.json", json.dumps(rows, separators=(",", ":")).encode())

    bucket_root = path / "bucket"
    objects: dict[str, dict[str, Any]] = {}
    total = 0
    for file in sorted(_iter_files(bucket_root)):
        key = file.relative_to(bucket_root).as_posix()
        size = file.stat().st_size
        modified = "2019-10-31T00:00:00Z" if file.suffix != ".nwb" else PUBLISHED_AT
        objects[key] = {"size": size, "md5": _md5(file), "etag": s3_etag(file, part_size), "last_modified": modified}
        total += size

    passing = sum(
        1
        for u in build.records["EcephysUnit"]
        if u["quality"] == "good"
        and u["amplitude_cutoff"] is not None and u["amplitude_cutoff"] <= THRESHOLDS["amplitude_cutoff"]
        and u["presence_ratio"] is not None and u["presence_ratio"] >= THRESHOLDS["presence_ratio"]
        and u["isi_violations"] is not None and u["isi_violations"] <= THRESHOLDS["isi_violations"]
    )  # fmt: skip
    summary = DatasetSummary(
        path=path,
        sessions=len(build.records["EcephysSession"]),
        probes=len(build.records["EcephysProbe"]),
        probes_without_lfp=sum(1 for p in build.records["EcephysProbe"] if not p["use_lfp_data"]),
        channels=len(build.records["EcephysChannel"]),
        units=len(build.records["EcephysUnit"]),
        passing_units=passing,
        objects=len(objects),
        bytes=total,
        nwb_backend=used_backend,
        seconds=time.monotonic() - started,
    )
    index = {
        "format": FORMAT,
        "bucket": BUCKET,
        "prefix": PREFIX,
        "part_size": part_size,
        "seed": seed,
        "scale": n_sessions,
        "file_size": file_size,
        "nwb_backend": used_backend,
        "counts": {k: v for k, v in summary.__dict__.items() if isinstance(v, int)},
        "objects": objects,
        "downloads": {str(k): v for k, v in sorted(downloads.items())},
    }
    # Written last: a directory without dataset.json is an unfinished dataset.
    layout.write_atomic(path / "dataset.json", json.dumps(index, indent=1).encode())
    return summary

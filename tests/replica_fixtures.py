"""Tiny hand-made replica datasets for the server tests: a few objects and a few records.

Written directly in the ``dataset.json`` / ``records/`` / ``bucket/`` format, so the server is
tested independently of the dataset generator.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecephys_dl.replica.s3 import s3_etag

__all__ = ["PART_SIZE", "PREFIX", "TinyDataset", "build_dataset"]

PART_SIZE = 64 * 1024
PREFIX = "visual-coding-neuropixels/ecephys-cache/"
BUCKET = "allen-brain-observatory"
LAST_MODIFIED = "2019-10-03T00:00:00Z"


@dataclass(frozen=True)
class TinyDataset:
    """What :func:`build_dataset` wrote, for tests to compare against."""

    directory: Path
    part_size: int
    contents: Mapping[str, bytes]
    downloads: Mapping[int, str]
    big_key: str  # larger than part_size: a multipart ETag
    small_key: str
    exact_key: str  # exactly part_size bytes: still a plain MD5
    empty_key: str
    odd_key: str  # needs escaping in XML and percent-encoding in a URL

    def file_id(self, key: str) -> int:
        """The WellKnownFile id whose download is ``key``."""
        return next(file_id for file_id, target in self.downloads.items() if target == key)


def build_dataset(directory: Path, *, seed: int = 0, part_size: int = PART_SIZE) -> TinyDataset:
    """Write a small dataset into ``directory`` and describe it."""
    rng = random.Random(seed)
    big = PREFIX + "session_1001/session_1001.nwb"
    small = PREFIX + "session_1001/probe_2001_lfp.nwb"
    exact = PREFIX + "session_1002/session_1002.nwb"
    empty = PREFIX + "natural_scene_templates/natural_scene_0.tiff"
    odd = PREFIX + 'odd & <name> "q" é+.json'
    contents: dict[str, bytes] = {
        PREFIX + "manifest.json": json.dumps({"manifest": [], "version": "0.3.0"}, indent=2).encode(),
        PREFIX + "sessions.csv": b"id,session_type\n1001,brain_observatory_1.1\n1002,functional_connectivity\n",
        big: rng.randbytes(part_size * 2 + 12345),
        small: rng.randbytes(20_000),
        exact: rng.randbytes(part_size),
        empty: b"",
        odd: b'{"odd": true}',
        "other/readme.txt": b"outside the prefix\n",
    }
    downloads = {1026124469: big, 1026124481: small, 1026124470: exact, 1026124499: empty}
    objects: dict[str, Any] = {}
    for key, data in contents.items():
        path = directory / "bucket" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        objects[key] = {
            "size": len(data),
            "md5": hashlib.md5(data).hexdigest(),
            "etag": s3_etag(path, part_size),
            "last_modified": LAST_MODIFIED,
        }
    meta = {
        "format": "ecephys-dl-replica/1",
        "bucket": BUCKET,
        "prefix": PREFIX,
        "part_size": part_size,
        "objects": objects,
        "downloads": {str(file_id): key for file_id, key in downloads.items()},
        "generator": {"seed": seed, "note": "ignored by the server"},
    }
    (directory / "records").mkdir(parents=True, exist_ok=True)
    for model, rows in _records(downloads).items():
        (directory / "records" / f"{model}.json").write_text(json.dumps(sorted(rows, key=lambda r: r["id"])))
    (directory / "dataset.json").write_text(json.dumps(meta, indent=1))
    return TinyDataset(directory, part_size, contents, downloads, big, small, exact, empty, odd)


def _records(downloads: Mapping[int, str]) -> dict[str, list[dict[str, Any]]]:
    sessions = [
        {
            "id": 1001,
            "date_of_acquisition": "2019-01-09T00:26:20Z",
            "fail_eye_tracking": False,
            "isi_experiment_id": 9001,
            "published_at": "2019-10-03T00:00:00Z",
            "specimen_id": 3001,
            "stimulus_name": "brain_observatory_1.1",
        },
        {
            "id": 1002,
            "date_of_acquisition": "2019-02-01T00:00:00Z",
            "fail_eye_tracking": True,
            "isi_experiment_id": 9002,
            "published_at": "2019-10-03T00:00:00Z",
            "specimen_id": 3002,
            "stimulus_name": "functional_connectivity",
        },
    ]
    files = [
        _file(1026124469, 1001, "EcephysSession", 5, downloads[1026124469]),
        _file(1026124470, 1002, "EcephysSession", 5, downloads[1026124470]),
        _file(1026124481, 2001, "EcephysProbe", 6, downloads[1026124481]),
    ]
    probes = [
        {
            "id": 2000 + n,
            "air_channel_index": 380,
            "ecephys_session_id": 1001 if n < 3 else 1002,
            "lfp_sampling_rate": 2499.99,
            "lfp_temporal_subsampling_factor": 2.0,
            "name": f"probe{'ABCDEF'[n - 1]}",
            "phase": "3a",
            "sampling_rate": 29999.9,
            "surface_channel_index": 350,
            "use_lfp_data": True,
        }
        for n in range(1, 5)
    ]
    channels = [
        {
            "id": 5000 + n,
            "ecephys_probe_id": 2001 + n % 4,
            "local_index": n,
            "probe_horizontal_position": 11 + n % 2 * 16,
            "probe_vertical_position": 20 * n,
            "anterior_posterior_ccf_coordinate": 8165.0,
            "dorsal_ventral_ccf_coordinate": 3314.0,
            "left_right_ccf_coordinate": 6862.0,
            "ecephys_structure_id": 215 if n % 3 else None,
        }
        for n in range(12)
    ]
    units = [
        {"id": 7000 + n, "ecephys_channel_id": 5000 + n % 12, "quality": "good" if n % 4 else "noise"}
        for n in range(30)
    ]
    bundles = [
        {"id": 8000 + n, "ecephys_unit_id": 7000 + n, "data": json.dumps({"g_dsi_dg": 0.1 * n})} for n in range(30)
    ]
    return {
        "EcephysSession": sessions,
        "Specimen": [
            {"id": 3001, "name": "Sst-IRES-Cre;Ai32-1", "donor_id": 4001},
            {"id": 3002, "name": "wt+2&co", "donor_id": 4002},  # a + and an & that must survive decoding
        ],
        "Donor": [
            {"id": 4001, "sex": "M", "full_genotype": "Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt", "age_id": 1},
            {"id": 4002, "sex": "F", "full_genotype": None, "age_id": 2},
        ],
        "DonorAge": [{"id": 1, "days": 118, "name": "P118"}, {"id": 2, "days": 99, "name": "P99"}],
        "WellKnownFile": files,
        "WellKnownFileType": [{"id": 5, "name": "EcephysNwb"}, {"id": 6, "name": "EcephysLfpNwb"}],
        "EcephysProbe": probes,
        "EcephysChannel": channels,
        "Structure": [{"id": 215, "acronym": "APN", "name": "Anterior pretectal nucleus"}],
        "EcephysUnit": units,
        "EcephysUnitMetricBundle": bundles,
    }


def _file(file_id: int, owner: int, owner_type: str, type_id: int, key: str) -> dict[str, Any]:
    return {
        "id": file_id,
        "attachable_id": owner,
        "attachable_type": owner_type,
        "download_link": f"/api/v2/well_known_file_download/{file_id}",
        "path": f"/external/mouse_ecephys/prod/{key.rsplit('/', 1)[-1]}",
        "well_known_file_type_id": type_id,
    }

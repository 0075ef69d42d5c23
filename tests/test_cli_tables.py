"""The table commands end to end: fetched from the replica over HTTP, cached, then offline.

Expected values come from the replica's generated records, not from the code under test.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecephys_dl.replica import Fault, Replica
from ecephys_dl.replica.dataset import PREFIX

DATA = Path(__file__).parent / "data"


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    return json.loads((dataset_dir / "records" / f"{model}.json").read_text())


def _args(replica: Replica, cache: Path, *rest: str, source: str = "warehouse", retries: int = 2, timeout: float = 10) -> list[str]:
    return ["--cache-dir", str(cache), "--source", source, "--warehouse-url", replica.warehouse_url, "--s3-url", replica.s3_url,
            "--retries", str(retries), "--retry-wait", "0.05", "--timeout", str(timeout), *rest]  # fmt: skip


@pytest.fixture
def fetched(replica: Replica, tmp_path: Path, run: Any) -> Iterator[Path]:
    """A cache whose metadata was fetched from the replica's warehouse by `sessions`."""
    cache = tmp_path / "cache"
    result = run(*_args(replica, cache, "sessions", "--format", "ids"))
    assert result.code == 0, result.err
    yield cache


def _acronyms_by_session(dataset_dir: Path) -> dict[int, set[str | None]]:
    structures = {s["id"]: s["acronym"] for s in _records(dataset_dir, "Structure")}
    probe_session = {p["id"]: p["ecephys_session_id"] for p in _records(dataset_dir, "EcephysProbe")}
    out: dict[int, set[str | None]] = {}
    for c in _records(dataset_dir, "EcephysChannel"):
        out.setdefault(probe_session[c["ecephys_probe_id"]], set()).add(structures.get(c["ecephys_structure_id"]))
    return out


def test_first_run_writes_allensdk_csvs_and_manifest(fetched: Path, dataset_dir: Path) -> None:
    """The four CSVs fetched through the RMA queries are byte-identical to AllenSDK's cache files; manifest.json too."""
    bucket = dataset_dir / "bucket" / PREFIX
    for name in ("sessions", "probes", "channels", "units"):
        assert (fetched / f"{name}.csv").read_bytes() == (bucket / f"{name}.csv").read_bytes(), name
    assert (fetched / "manifest.json").read_bytes() == (DATA / "manifest.json").read_bytes()
    leftovers = [p.name for p in fetched.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_s3_source_gives_the_same_cache(replica: Replica, tmp_path: Path, run: Any, dataset_dir: Path) -> None:
    """--source s3 fills the cache with the same bytes, from the mirror's copies."""
    cache = tmp_path / "s3cache"
    result = run(*_args(replica, cache, "probes", "--format", "ids", source="s3"))
    assert result.code == 0, result.err
    bucket = dataset_dir / "bucket" / PREFIX
    for name in ("sessions", "probes", "channels", "units"):
        assert (cache / f"{name}.csv").read_bytes() == (bucket / f"{name}.csv").read_bytes(), name
    paths = {r["path"].split("?")[0] for r in replica.requests()}
    assert all(p.startswith("/allen-brain-observatory/") for p in paths)


def test_tables_work_offline_after_the_first_fetch(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """Once fetched, every table command answers with the replica stopped (nothing listens on its port)."""
    cache = tmp_path / "cache"
    with Replica(dataset_dir) as replica:
        args = _args(replica, cache)
        assert run(*args, "sessions", "--format", "ids").code == 0
    for command in (["sessions"], ["probes"], ["channels", "--session", str(_records(dataset_dir, "EcephysSession")[0]["id"])], ["units"]):
        result = run(*args, *command, "--format", "csv")
        assert result.code == 0, (command, result.err)
        assert result.out.count("\n") > 1
    # --refresh must go to the network, and says clearly that it cannot.
    result = run(*args, "sessions", "--refresh")
    assert result.code == 5
    assert "127.0.0.1" in result.err


def test_sessions_table_counts_and_acronyms(fetched: Path, replica: Replica, dataset_dir: Path, run: Any) -> None:
    """unit/channel/probe counts follow AllenSDK (units after the default filters), acronyms include nan."""
    result = run(*_args(replica, fetched, "sessions", "--format", "json"))
    rows = {r["id"]: r for r in json.loads(result.out)}
    probes = _records(dataset_dir, "EcephysProbe")
    channels = _records(dataset_dir, "EcephysChannel")
    probe_session = {p["id"]: p["ecephys_session_id"] for p in probes}
    channel_session = {c["id"]: probe_session[c["ecephys_probe_id"]] for c in channels}

    def passes(u: dict[str, Any]) -> bool:
        ok = [u["amplitude_cutoff"] is not None and u["amplitude_cutoff"] <= 0.1,
              u["presence_ratio"] is not None and u["presence_ratio"] >= 0.95,
              u["isi_violations"] is not None and u["isi_violations"] <= 0.5, u["quality"] == "good"]  # fmt: skip
        return all(ok)

    acronyms = _acronyms_by_session(dataset_dir)
    for s in _records(dataset_dir, "EcephysSession"):
        row = rows[s["id"]]
        assert row["probe_count"] == sum(1 for p in probes if p["ecephys_session_id"] == s["id"])
        assert row["channel_count"] == sum(1 for c in channels if channel_session[c["id"]] == s["id"])
        assert row["unit_count"] == sum(1 for u in _records(dataset_dir, "EcephysUnit") if channel_session[u["ecephys_channel_id"]] == s["id"] and passes(u))
        assert set(row["ecephys_structure_acronyms"]) == acronyms[s["id"]]
        assert row["session_type"] == s["stimulus_name"]
    assert list(json.loads(result.out)[0]) == ["id", "published_at", "specimen_id", "session_type", "age_in_days", "sex", "full_genotype",
                                                "unit_count", "channel_count", "probe_count", "ecephys_structure_acronyms"]  # fmt: skip


def test_tutorial_example_is_one_command_line(fetched: Path, replica: Replica, dataset_dir: Path, run: Any) -> None:
    """--sex M --genotype Sst --session-type brain_observatory_1.1 --structure VISl selects what the records say."""
    result = run(*_args(replica, fetched, "sessions", "--sex", "M", "--genotype", "sst", "--session-type", "brain_observatory_1.1",
                        "--structure", "VISl", "--format", "ids"))  # fmt: skip
    assert result.code == 0, result.err
    specimens = {s["id"]: s for s in _records(dataset_dir, "Specimen")}
    donors = {d["id"]: d for d in _records(dataset_dir, "Donor")}
    acronyms = _acronyms_by_session(dataset_dir)
    expected = []
    for s in _records(dataset_dir, "EcephysSession"):
        donor = donors[specimens[s["specimen_id"]]["donor_id"]]
        if donor["sex"] == "M" and "sst" in (donor["full_genotype"] or "wt").lower() and s["stimulus_name"] == "brain_observatory_1.1" and "VISl" in acronyms[s["id"]]:
            expected.append(s["id"])
    assert expected
    assert [int(line) for line in result.out.split()] == expected


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "ids", "table"])
def test_every_format(fetched: Path, replica: Replica, dataset_dir: Path, run: Any, fmt: str) -> None:
    """Each format carries the same probes: csv/tsv with a header, json records, ids one per line, a table with names."""
    result = run(*_args(replica, fetched, "probes", "--format", fmt))
    assert result.code == 0, result.err
    ids = [p["id"] for p in _records(dataset_dir, "EcephysProbe")]
    if fmt in ("csv", "tsv"):
        reader = csv.DictReader(io.StringIO(result.out), delimiter="," if fmt == "csv" else "\t")
        rows = list(reader)
        assert [int(r["id"]) for r in rows] == ids
        assert reader.fieldnames == ["id", "ecephys_session_id", "lfp_sampling_rate", "name", "phase", "sampling_rate", "has_lfp_data",
                                     "unit_count", "channel_count", "ecephys_structure_acronyms"]  # fmt: skip
        assert ";" in rows[0]["ecephys_structure_acronyms"]
    elif fmt == "json":
        assert [r["id"] for r in json.loads(result.out)] == ids
    elif fmt == "ids":
        assert result.out.split() == [str(i) for i in ids]
    else:
        assert "ecephys_session_id" in result.out and str(ids[0]) in result.out


def test_lfp_sampling_rate_is_divided_by_the_subsampling_factor(fetched: Path, replica: Replica, dataset_dir: Path, run: Any) -> None:
    """probes shows lfp_sampling_rate / lfp_temporal_subsampling_factor (about 1250 Hz), as AllenSDK does."""
    rows = json.loads(run(*_args(replica, fetched, "probes", "--format", "json")).out)
    raw = {p["id"]: p for p in _records(dataset_dir, "EcephysProbe")}
    for row in rows:
        probe = raw[row["id"]]
        assert row["lfp_sampling_rate"] == pytest.approx(probe["lfp_sampling_rate"] / probe["lfp_temporal_subsampling_factor"])
        assert 1240 < row["lfp_sampling_rate"] < 1260


def test_units_quality_options(fetched: Path, replica: Replica, dataset_dir: Path, run: Any) -> None:
    """Default filters are inclusive; each threshold can move; --no-quality-filter lists every unit."""
    units = _records(dataset_dir, "EcephysUnit")

    def count(amax: float, pmin: float, imax: float) -> int:
        return sum(1 for u in units if u["quality"] == "good" and u["amplitude_cutoff"] is not None and u["amplitude_cutoff"] <= amax
                   and u["presence_ratio"] is not None and u["presence_ratio"] >= pmin and u["isi_violations"] is not None and u["isi_violations"] <= imax)  # fmt: skip

    default = run(*_args(replica, fetched, "units", "--format", "ids")).out.split()
    assert len(default) == count(0.1, 0.95, 0.5)
    at_threshold = [u["id"] for u in units if u["amplitude_cutoff"] == 0.1 and u["quality"] == "good"]
    assert at_threshold and set(map(str, at_threshold)) <= set(default)
    looser = run(*_args(replica, fetched, "units", "--presence-ratio-min", "0.5", "--amplitude-cutoff-max", "0.2", "--format", "ids")).out.split()
    assert len(looser) == count(0.2, 0.5, 0.5)
    everything = run(*_args(replica, fetched, "units", "--no-quality-filter", "--format", "ids")).out.split()
    assert len(everything) == len(units)


def test_units_filters_by_session_probe_and_structure(fetched: Path, replica: Replica, dataset_dir: Path, run: Any) -> None:
    """--session, --probe and --structure narrow the units table to exactly those units."""
    rows = json.loads(run(*_args(replica, fetched, "units", "--no-quality-filter", "--structure", "CA1", "--format", "json")).out)
    assert rows and all(r["ecephys_structure_acronym"] == "CA1" for r in rows)
    probe = _records(dataset_dir, "EcephysProbe")[0]
    rows = json.loads(run(*_args(replica, fetched, "units", "--probe", str(probe["id"]), "--format", "json")).out)
    assert rows and {r["ecephys_probe_id"] for r in rows} == {probe["id"]}
    assert "waveform_PT_ratio" in rows[0] and "L_ratio" in rows[0] and "quality" not in rows[0]


def test_metrics_command_joins_units(fetched: Path, replica: Replica, run: Any) -> None:
    """metrics TYPE fetches the metric bundles and joins them onto the filtered units."""
    result = run(*_args(replica, fetched, "metrics", "functional_connectivity", "--format", "json"))
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert rows and all(r["session_type"] == "functional_connectivity" for r in rows)
    assert "ecephys_unit_id" in rows[0] and "firing_rate_rf" in rows[0]
    assert (fetched / "functional_connectivity_analysis_metrics.csv").is_file()
    bad = run(*_args(replica, fetched, "metrics", "natural_movies"))
    assert bad.code == 2 and "brain_observatory_1.1" in bad.err


def test_columns_option(fetched: Path, replica: Replica, run: Any) -> None:
    """--columns picks and orders columns; an unknown one is a usage error naming the choices."""
    result = run(*_args(replica, fetched, "sessions", "--columns", "sex,session_type", "--format", "csv"))
    assert result.out.splitlines()[0] == "id,sex,session_type"
    bad = run(*_args(replica, fetched, "sessions", "--columns", "nope"))
    assert bad.code == 2 and "nope" in bad.err and "unit_count" in bad.err


def test_empty_result_is_not_an_error(fetched: Path, replica: Replica, run: Any) -> None:
    """No matching session: exit 0, a note on stderr, only the header on stdout."""
    result = run(*_args(replica, fetched, "sessions", "--genotype", "no-such-line", "--format", "csv"))
    assert result.code == 0
    assert "no sessions match" in result.err
    assert result.out.strip() == "id,published_at,specimen_id,session_type,age_in_days,sex,full_genotype,unit_count,channel_count,probe_count,ecephys_structure_acronyms"


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--sex", "X"], "'m', 'f'"), (["--session-type", "movies"], "functional_connectivity"), (["--id", "123"], "123"),
     (["--format", "xml"], "csv")],
)  # fmt: skip
def test_bad_values_are_usage_errors(fetched: Path, replica: Replica, run: Any, args: list[str], needle: str) -> None:
    """A bad option value exits 2 and names the valid choices (or the unknown id)."""
    result = run(*_args(replica, fetched, "sessions", *args))
    assert result.code == 2
    assert needle in result.err.lower()


def test_zero_row_page_is_a_clear_error(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """A page answering num_rows 0 before the end fails with a message, never loops, and writes no table."""
    with Replica(dataset_dir, faults=[Fault.parse("rma-zero:after_row=1")]) as replica:
        result = run(*_args(replica, tmp_path / "cache", "sessions", "--format", "ids"))
    assert result.code == 1
    assert "units" in result.err or "channels" in result.err
    assert not (tmp_path / "cache" / "units.csv").exists()


def test_error_envelope_is_a_clear_error(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """A success:false answer is reported with the server's message and the query it answered."""
    with Replica(dataset_dir, faults=[Fault.parse("rma-error:message=Data Access Error,query=*EcephysProbe*")]) as replica:
        result = run(*_args(replica, tmp_path / "cache", "probes"))
    assert result.code == 1
    assert "Data Access Error" in result.err and "probes" in result.err
    assert not (tmp_path / "cache" / "probes.csv").exists()


def test_server_errors_are_retried_then_reported_as_unreachable(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """503s are retried; two of them are absorbed, a server that keeps failing ends in exit 5."""
    faults = [Fault.parse("error:status=503,retry_after=0,times=2")]
    with Replica(dataset_dir, faults=faults) as replica:
        result = run(*_args(replica, tmp_path / "a", "probes", "--format", "ids"))
        assert result.code == 0, result.err
        assert sum(1 for r in replica.requests() if r["status"] == 503) == 2
    with Replica(dataset_dir, faults=[Fault.parse("error:status=500,query=*EcephysProbe*")]) as replica:
        result = run(*_args(replica, tmp_path / "b", "probes"))
    assert result.code == 5
    assert "probes" in result.err


def test_hanging_page_gives_up_within_its_timeout(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """A page that never answers (the real paged queries hang) ends with exit 5, not a hang."""
    import time

    with Replica(dataset_dir, faults=[Fault.parse("rma-hang:seconds=600,query=*EcephysUnit*")]) as replica:
        start = time.monotonic()
        result = run(*_args(replica, tmp_path / "cache", "sessions", retries=1, timeout=1))
        elapsed = time.monotonic() - start
    assert result.code == 5
    assert "units" in result.err
    assert elapsed < 60


def test_manifest_of_another_version_is_not_overwritten(replica: Replica, tmp_path: Path, run: Any) -> None:
    """A cache with an AllenSDK manifest of another version gets an error naming it; the file is untouched."""
    cache = tmp_path / "cache"
    cache.mkdir()
    old = json.dumps({"manifest": [{"type": "manifest_version", "value": "0.2.1"}]}, indent=2).encode()
    (cache / "manifest.json").write_bytes(old)
    result = run(*_args(replica, cache, "sessions"))
    assert result.code == 1
    assert "0.2.1" in result.err
    assert (cache / "manifest.json").read_bytes() == old
    (cache / "manifest.json").write_bytes(b"{not json")
    result = run(*_args(replica, cache, "sessions"))
    assert result.code == 1 and "manifest" in result.err
    assert (cache / "manifest.json").read_bytes() == b"{not json"


def test_piping_into_head_ends_quietly(fetched: Path) -> None:
    """`ecephys-dl units | head -1` exits 0 with no traceback when the reader goes away early."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ECEPHYS_DL_CACHE_DIR": str(fetched)}
    script = f"set -o pipefail; {sys.executable} -m ecephys_dl units --no-quality-filter --format csv | head -1"
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("id,waveform_PT_ratio")
    assert "Traceback" not in done.stderr and "Error" not in done.stderr


@pytest.mark.parametrize("source", ["warehouse", "s3"])
def test_session_metrics_are_fetched_as_allensdk_caches_them(replica: Replica, dataset_dir: Path, tmp_path: Path, source: str) -> None:
    """A session's analysis-metrics CSV, from either source, is byte-identical to AllenSDK's cached file."""
    from ecephys_dl.catalog import Catalog
    from ecephys_dl.client import make_client
    from ecephys_dl.mirror import S3Resolver
    from ecephys_dl.retry import RetryPolicy
    from ecephys_dl.rma import RmaClient
    from ecephys_dl.s3 import S3Client
    from ecephys_dl.warehouse import WarehouseResolver

    session_id = _records(dataset_dir, "EcephysSession")[1]["id"]
    with make_client(read_timeout=10) as client:
        policy = RetryPolicy(attempts=2, backoff=0.01)
        made: Any = (lambda: WarehouseResolver(RmaClient(replica.warehouse_url, client=client, policy=policy))) if source == "warehouse" else (
            lambda: S3Resolver(S3Client(replica.s3_url, client=client, policy=policy)))  # fmt: skip
        catalog = Catalog(tmp_path / "cache", made)
        assert catalog.ensure_session_metrics(session_id) is True
        assert catalog.ensure_session_metrics(session_id) is False  # cached: no second fetch
    name = f"session_{session_id}/session_{session_id}_analysis_metrics.csv"
    assert (tmp_path / "cache" / name).read_bytes() == (dataset_dir / "bucket" / PREFIX / name).read_bytes()

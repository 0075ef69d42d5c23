"""The links of a selection, as tables: which URLs each source's targets get, in which order, and each printed form."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from ecephys_dl.config import Source
from ecephys_dl.layout import CacheLayout
from ecephys_dl.links import CSV_HEADER, Link, LinkFormat, dandi_download_url, links_of, render, s3_object_url
from ecephys_dl.published import PublishedFile, PublishedTable, load_published
from ecephys_dl.targets import Target, TargetKind

SHIPPED = load_published()


def _published(relative: str) -> PublishedFile:
    file = SHIPPED.by_path(relative)
    assert file is not None, relative
    return file


SESSION_ROW = _published("session_715093703/session_715093703.nwb")
LFP_ROW = _published("session_715093703/probe_810755797_lfp.nwb")

ROOT = Path("/data/cache")
CACHE = CacheLayout(ROOT)
WAREHOUSE = "http://warehouse.test"
S3 = "https://bucket.test"
DANDI = "https://dandi.test/api"
KEY = "visual-coding-neuropixels/ecephys-cache/"

SESSION_AT = {
    Source.WAREHOUSE: f"{WAREHOUSE}/api/v2/well_known_file_download/1026124469",
    Source.S3: f"{S3}/{KEY}session_715093703/session_715093703.nwb",
    Source.DANDI: f"{DANDI}/assets/{SESSION_ROW.dandi_asset_id}/download/",
}
LFP_AT = {
    Source.WAREHOUSE: f"{WAREHOUSE}/api/v2/well_known_file_download/1026124481",
    Source.S3: f"{S3}/{KEY}session_715093703/probe_810755797_lfp.nwb",
    Source.DANDI: f"{DANDI}/assets/{LFP_ROW.dandi_asset_id}/download/",
}
# A probe the release has no file for (so the published table has no row for it).
STRAY_AT = {Source.WAREHOUSE: f"{WAREHOUSE}/api/v2/well_known_file_download/99", Source.S3: f"{S3}/{KEY}session_715093703/probe_999_lfp.nwb"}


def _targets(source: Source) -> list[Target]:
    size = None if source is Source.WAREHOUSE else 5  # the warehouse lists no sizes
    return [
        Target(TargetKind.SESSION_NWB, 715093703, None, SESSION_AT[source], size),
        Target(TargetKind.LFP_NWB, 715093703, 810755797, LFP_AT[source], size),
        Target(TargetKind.LFP_NWB, 715093703, 999, STRAY_AT[source], size),
    ]


def _links(source: Source, table: PublishedTable = SHIPPED) -> tuple[Link, ...]:
    return links_of(_targets(source), CACHE, table, sources=(source,), s3_url=S3 + "/", dandi_url=DANDI + "/")


@pytest.mark.parametrize(
    ("source", "session_urls", "lfp_urls", "stray_urls"),
    [
        # The warehouse's own link first, then the S3 key and the DANDI asset, both built from ids.
        (Source.WAREHOUSE, [SESSION_AT[Source.WAREHOUSE], SESSION_AT[Source.S3], SESSION_AT[Source.DANDI]],
         [LFP_AT[Source.WAREHOUSE], LFP_AT[Source.S3], LFP_AT[Source.DANDI]], [STRAY_AT[Source.WAREHOUSE], STRAY_AT[Source.S3]]),
        # From S3 the warehouse's link would take RMA queries: S3's own and DANDI's only.
        (Source.S3, [SESSION_AT[Source.S3], SESSION_AT[Source.DANDI]], [LFP_AT[Source.S3], LFP_AT[Source.DANDI]], [STRAY_AT[Source.S3]]),
    ],
)  # fmt: skip
def test_the_run_s_source_comes_first_then_the_others_in_a_fixed_order(source: Source, session_urls: list[str], lfp_urls: list[str], stray_urls: list[str]) -> None:
    """Each link lists the run's URL first, then the S3 mirror's, then DANDI's where the file is published; none twice."""
    session, lfp, stray = _links(source)
    assert (list(session.urls), list(lfp.urls), list(stray.urls)) == (session_urls, lfp_urls, stray_urls)
    assert session.url == session_urls[0]


def test_a_link_carries_the_published_digest_and_the_source_s_size() -> None:
    """sha256 is the published table's (None for a file it does not hold); size is what the source listed."""
    session, lfp, stray = _links(Source.WAREHOUSE)
    assert (session.path, session.kind, session.session_id, session.probe_id) == ("session_715093703/session_715093703.nwb", TargetKind.SESSION_NWB, 715093703, None)
    assert (lfp.path, lfp.kind, lfp.probe_id) == ("session_715093703/probe_810755797_lfp.nwb", TargetKind.LFP_NWB, 810755797)
    assert (session.sha256, lfp.sha256, stray.sha256) == (SESSION_ROW.sha256, LFP_ROW.sha256, None)
    assert (session.size, lfp.size) == (None, None)
    assert [link.size for link in _links(Source.S3)] == [5, 5, 5]


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: s3_object_url("https://b.test/", "session_1/session_1.nwb"), "https://b.test/visual-coding-neuropixels/ecephys-cache/session_1/session_1.nwb"),
        (lambda: s3_object_url("http://127.0.0.1:9/bucket", "session_1/probe_2_lfp.nwb"), "http://127.0.0.1:9/bucket/visual-coding-neuropixels/ecephys-cache/session_1/probe_2_lfp.nwb"),
        (lambda: dandi_download_url("https://api.dandiarchive.org/api", "8bb08fa1-efc6-51a5-b79b-23bc51dca228"),
         "https://api.dandiarchive.org/api/assets/8bb08fa1-efc6-51a5-b79b-23bc51dca228/download/"),
        (lambda: dandi_download_url("http://127.0.0.1:9/api/", "a/b"), "http://127.0.0.1:9/api/assets/a%2Fb/download/"),
    ],
)  # fmt: skip
def test_urls_built_offline(build: object, expected: str) -> None:
    """The S3 key is the cache path under the mirror's prefix; the DANDI URL is the asset's download endpoint."""
    assert callable(build) and build() == expected


def test_the_urls_form_prints_the_run_s_url_of_each_file() -> None:
    assert render(_links(Source.WAREHOUSE), LinkFormat.URLS, root=ROOT) == "".join(f"{at[Source.WAREHOUSE]}\n" for at in (SESSION_AT, LFP_AT, STRAY_AT))


def test_the_aria2_form_has_every_uri_on_one_line_its_place_and_its_digest() -> None:
    """One tab-separated URI line per file, dir= (absolute) and out=, and checksum= where a digest is published."""
    text = render(_links(Source.WAREHOUSE), LinkFormat.ARIA2, root=ROOT)
    session_dir = (ROOT / "session_715093703").resolve()
    assert text == (
        f"{SESSION_AT[Source.WAREHOUSE]}\t{SESSION_AT[Source.S3]}\t{SESSION_AT[Source.DANDI]}\n"
        f"  dir={session_dir}\n  out=session_715093703.nwb\n  checksum=sha-256={SESSION_ROW.sha256}\n"
        f"{LFP_AT[Source.WAREHOUSE]}\t{LFP_AT[Source.S3]}\t{LFP_AT[Source.DANDI]}\n"
        f"  dir={session_dir}\n  out=probe_810755797_lfp.nwb\n  checksum=sha-256={LFP_ROW.sha256}\n"
        f"{STRAY_AT[Source.WAREHOUSE]}\t{STRAY_AT[Source.S3]}\n"
        f"  dir={session_dir}\n  out=probe_999_lfp.nwb\n"
    )


def test_the_csv_form_adds_sha256_and_the_space_separated_urls() -> None:
    text = render(_links(Source.S3), LinkFormat.CSV, root=ROOT)
    rows = list(csv.reader(io.StringIO(text)))
    assert text.startswith("path,url,kind,session_id,probe_id,size,sha256,urls\n")
    assert rows == [
        list(CSV_HEADER),
        ["session_715093703/session_715093703.nwb", SESSION_AT[Source.S3], "session", "715093703", "", "5", SESSION_ROW.sha256, f"{SESSION_AT[Source.S3]} {SESSION_AT[Source.DANDI]}"],
        ["session_715093703/probe_810755797_lfp.nwb", LFP_AT[Source.S3], "lfp", "715093703", "810755797", "5", LFP_ROW.sha256, f"{LFP_AT[Source.S3]} {LFP_AT[Source.DANDI]}"],
        ["session_715093703/probe_999_lfp.nwb", STRAY_AT[Source.S3], "lfp", "715093703", "999", "5", "", STRAY_AT[Source.S3]],
    ]


def test_the_json_form_adds_sha256_and_the_url_list() -> None:
    rows = json.loads(render(_links(Source.WAREHOUSE), LinkFormat.JSON, root=ROOT))
    assert rows[0] == {"path": "session_715093703/session_715093703.nwb", "url": SESSION_AT[Source.WAREHOUSE], "kind": "session", "session_id": 715093703,
                       "probe_id": None, "size": None, "sha256": SESSION_ROW.sha256, "urls": [SESSION_AT[s] for s in (Source.WAREHOUSE, Source.S3, Source.DANDI)]}  # fmt: skip
    assert (rows[1]["probe_id"], rows[1]["sha256"]) == (810755797, LFP_ROW.sha256)
    assert (rows[2]["sha256"], rows[2]["urls"]) == (None, [STRAY_AT[Source.WAREHOUSE], STRAY_AT[Source.S3]])


@pytest.mark.parametrize("fmt", list(LinkFormat))
def test_no_links_print_an_empty_form(fmt: LinkFormat) -> None:
    expected = {LinkFormat.CSV: ",".join(CSV_HEADER) + "\n", LinkFormat.JSON: "[]\n"}.get(fmt, "")
    assert render((), fmt, root=ROOT) == expected


def test_the_command_offers_every_form() -> None:
    """links --format lists exactly the forms the renderer knows."""
    from ecephys_dl.cli import fetching

    option = next(p for p in fetching.links.params if p.name == "fmt")
    assert list(getattr(option.type, "choices", ())) == [f.value for f in LinkFormat]


def test_the_help_names_the_new_fields_with_examples() -> None:
    """links --help says what sha256, urls and the aria2 checksum are, and shows them in use."""
    from click.testing import CliRunner

    from ecephys_dl.cli.app import cli

    result = CliRunner().invoke(cli, ["links", "--help"])
    assert result.exit_code == 0
    for needle in ("`sha256`", "`urls`", "checksum=sha-256=", "Examples:", "--format aria2", "--format json", "--source s3 links"):
        assert needle in result.output, needle

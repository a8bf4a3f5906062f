"""The Dagster UI in headless Chromium: the six stages, and a failing check's rows where a reviewer reads them."""

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import cli
from tests.conftest import CORPORA, REPO
from tests.ui_support import CHROMIUM, browser_page, dagster_webserver, dismiss_community_dialog

pytestmark = pytest.mark.browser

STAGES = ["raw", "deduped", "cleaned", "synthetic", "verified", "formatted"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A home whose configuration forgot to redact emails, so the cleaned stage's suite fails."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    home = tmp_path_factory.mktemp("ui-home")
    config = home / "no-email.yaml"
    demo = (REPO / "configs" / "demo.yaml").read_text()
    # Benchmark paths in the demo configuration are relative to configs/; this copy lives elsewhere.
    demo = demo.replace("../../shared/corpora", str(CORPORA))
    config.write_text(re.sub(r"\n +email: placeholder", "", demo))
    saved = {k: os.environ.get(k) for k in ("THRESHER_HOME", "DAGSTER_HOME", "THRESHER_CONFIG")}
    os.environ.update(THRESHER_HOME=str(home), THRESHER_CONFIG=str(config))
    try:
        # Seed 11 plants three e-mail addresses in chat_part1.jsonl (ground_truth.jsonl says where).
        assert cli.main(["demo-corpus", "--rows", "1000", "--seed", "11"]) == 0
        # The batch run fails: its blocking cleaned check stops it before synthetic.
        assert cli.main(["ingest", str(home / "demo-corpus" / "files" / "chat_part1.jsonl")]) == 1
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    with dagster_webserver(home, config) as url:
        yield url


def test_the_asset_graph_shows_the_six_stages(ui: str) -> None:
    with browser_page() as page:
        page.goto(f"{ui}/asset-groups/curation", wait_until="networkidle")
        dismiss_community_dialog(page)
        for stage in STAGES:
            page.get_by_role("button", name=stage).first.wait_for(timeout=30_000)


def test_a_failing_check_shows_its_failing_rows_redacted(ui: str) -> None:
    with browser_page() as page:
        page.goto(f"{ui}/assets/cleaned?view=checks", wait_until="networkidle")
        dismiss_community_dialog(page)
        page.get_by_text("expectations").first.click()
        page.get_by_text("failing_rows").first.wait_for(timeout=30_000)
        body = page.inner_text("body")
        assert "This is a blocking asset check" in body
        assert "Failed" in body
        assert "no email address" in body  # the failed expectation, in the reviewer's words
        assert re.search(r"[0-9a-f]{12}:\d+\s+chat_part1\.jsonl:\d+", body), (
            "failing record id and source line"
        )
        assert "[EMAIL]" in body  # the preview is redacted ...
        assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", body)  # ... so no address reaches the page


def test_the_inspection_asset_page_shows_the_release_figures(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A release's figures open from the inspection asset's metadata as PNG images embedded in markdown."""
    home = tmp_path_factory.mktemp("ui-inspection")
    saved = {k: os.environ.get(k) for k in ("THRESHER_HOME", "DAGSTER_HOME", "THRESHER_CONFIG")}
    os.environ["THRESHER_HOME"] = str(home)
    os.environ.pop("THRESHER_CONFIG", None)
    try:
        assert cli.main(["demo-corpus", "--rows", "300", "--seed", "5"]) == 0
        # One batch through every stage, then the release job: formatted and inspection.
        assert cli.main(["ingest", str(home / "demo-corpus" / "files" / "chat_part1.jsonl")]) == 0
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    assert (home / "figures" / "funnel.png").exists()
    with dagster_webserver(home) as url, browser_page() as page:
        page.goto(f"{url}/assets/inspection", wait_until="networkidle")
        dismiss_community_dialog(page)
        page.get_by_text("[Show Markdown]").first.click()
        image = page.locator('img[src^="data:image/png;base64,"]').first
        image.wait_for(timeout=30_000)
        assert image.get_attribute("alt") == "Prompt and response length"
        assert page.evaluate("img => img.naturalWidth", image.element_handle()) == 800  # it decoded

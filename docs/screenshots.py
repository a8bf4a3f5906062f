"""Re-create the README's review-flow screenshots from the real Dagster UI.

    .venv/bin/python docs/screenshots.py

A dataset configuration that forgot to redact emails makes the cleaned stage's expectation suite
fail; the reviewer reads the failing rows on the check's page, restores the rule, re-runs the
batch, and the check passes. Every picture is taken from a live webserver in headless Chromium.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines import cli  # noqa: E402
from tests.ui_support import browser_page, dagster_webserver, dismiss_community_dialog  # noqa: E402

OUT = REPO / "docs" / "review"


def shoot(url: str, path: str, name: str, click: str | None = None, wait_for: str | None = None) -> None:
    with browser_page(1400, 950) as page:
        page.goto(url + path, wait_until="networkidle")
        dismiss_community_dialog(page)
        if click:
            page.get_by_text(click).first.click()
        if wait_for:
            page.get_by_text(wait_for).first.wait_for(timeout=30_000)
        time.sleep(1.5)
        page.screenshot(path=str(OUT / name))
        print(f"wrote {OUT / name}")


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="thresher-review-"))
    config = home / "dataset.yaml"
    # Benchmark paths in the demo configuration are relative to configs/; this copy lives elsewhere.
    demo = (REPO / "configs" / "demo.yaml").read_text().replace("../../shared", str(REPO.parent / "shared"))
    config.write_text(re.sub(r"\n +email: placeholder", "", demo))  # the mistake under review
    os.environ.update(THRESHER_HOME=str(home), THRESHER_CONFIG=str(config))
    cli.main(["demo-corpus", "--rows", "1000", "--seed", "11"])
    batch_file = home / "demo-corpus" / "files" / "chat_part1.jsonl"
    cli.main(["ingest", str(batch_file)])
    OUT.mkdir(parents=True, exist_ok=True)
    with dagster_webserver(home, config) as url:
        shoot(url, "/asset-groups/curation", "1-check-fails.png")
        shoot(
            url,
            "/assets/cleaned?view=checks",
            "2-failing-rows.png",
            click="expectations",
            wait_for="failing_rows",
        )
        config.write_text(demo)  # the fix: emails are redacted again
        cli.main(["ingest", str(batch_file)])
        shoot(
            url,
            "/assets/cleaned?view=checks",
            "3-check-passes.png",
            click="expectations",
            wait_for="Succeeded",
        )
        shoot(url, "/assets/cleaned?view=events", "4-materialization.png", wait_for="rejections_by_rule")


if __name__ == "__main__":
    main()

"""The analytics page in a real browser (Debian's Chromium driven by Playwright) on the three-day scenario: a
viewer logs in, the tiles, charts and tables show the API's figures, nothing is loaded from elsewhere, the CSV
downloads with one row per day, and a reversed range shows the API's reason."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.analytics.scenario import Played, embedded
from tests.analytics.test_figures_recomputed import DAYS, SINCE, UNTIL
from tests.auth.conftest import PASSWORD, add_person, email
from tests.e2e.sse import serve_http

CHROMIUM = os.environ.get("SWITCHBOARD_TEST_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None and not os.path.exists(CHROMIUM),
                                reason=f"Chromium not installed at {CHROMIUM}")


def _launch(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM,
                             args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])


@pytest.fixture(scope="module")
def scenario(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    """On SQLite only: the page reads the same API on both databases (compared there)."""
    yield from embedded("sqlite", request, tmp_path_factory)


def test_a_viewer_reads_the_charts_and_downloads_the_csv(scenario: Played, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from app.main import create_app

    api = scenario.client.get("/admin/v1/analytics", headers=scenario.a.headers(),
                              params={"since": SINCE.isoformat(), "until": UNTIL.isoformat()}).json()
    total = api["total"]
    viewer = add_person(scenario.a, email("viewer"), "viewer")  # type: ignore[arg-type]
    with serve_http(create_app(run_workers=False)) as base, sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1366, "height": 900}, accept_downloads=True)
        elsewhere: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(base) or r.url.startswith("blob:")
                else elsewhere.append(r.url))
        page.goto(f"{base}/console/analytics#since={SINCE}&until={UNTIL}")
        page.get_by_label("Email").fill(viewer.email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("body")).to_have_attribute("data-loaded", f"{SINCE}/{UNTIL}", timeout=30_000)
        expect(page.locator("#who")).to_contain_text("viewer")

        # Tiles: the range's totals.
        expect(page.locator("#tile-messages")).to_have_text(f"{total['messages_in']} / {total['messages_out']}")
        expect(page.locator("#tile-escalations")).to_have_text(str(total["escalations"]))
        expect(page.locator("#tile-deflection")).to_have_text(f"{total['deflection'] * 100:.1f}%")
        expect(page.locator("#tile-conversation-deflection")).to_have_text(
            f"{total['conversation_deflection'] * 100:.1f}%")

        # Charts: one bar per day and outcome with messages, one point per day with a deflection, one bar per
        # escalation reason, one cost bar per day and priced model.
        outcome_bars = page.locator("#chart-outcomes rect.bar")
        stacked = sum(1 for d in api["days"] for n in (
            d["inbound_by_status"].get("answered", 0), d["inbound_by_status"].get("escalated", 0),
            d["inbound_by_status"].get("human", 0)) if n > 0)
        expect(outcome_bars).to_have_count(stacked)
        heights = sum(float(v) for v in outcome_bars.evaluate_all("els => els.map(e => e.dataset.value)"))
        assert heights == total["messages_in"] - sum(
            n for s, n in total["inbound_by_status"].items() if s not in ("answered", "escalated", "human"))
        expect(page.locator("#chart-deflection circle.point")).to_have_count(
            sum(1 for d in api["days"] if d["deflection"] is not None))
        reasons = page.locator("#chart-reasons rect.bar")
        expect(reasons).to_have_count(len(total["escalations_by_reason"]))
        shown = dict(zip(reasons.evaluate_all("els => els.map(e => e.dataset.series)"),
                         [int(v) for v in reasons.evaluate_all("els => els.map(e => e.dataset.value)")], strict=True))
        assert shown == total["escalations_by_reason"]
        expect(page.locator("#chart-cost rect.bar")).to_have_count(
            sum(1 for d in api["days"] for u in d["llm_by_model"] if u["cost"]))
        expect(page.locator("#times tbody tr")).to_have_count(5)
        expect(page.locator("#models tbody tr")).to_have_count(len(total["llm_by_model"]))
        page.screenshot(path=str(tmp_path / "analytics.png"), full_page=True)

        # The CSV, as the page downloads it.
        with page.expect_download() as download:
            page.get_by_role("button", name="Download CSV").click()
        path = tmp_path / "analytics.csv"
        download.value.save_as(path)
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["day"] for r in rows] == [d.isoformat() for d in DAYS]
        assert sum(int(r["messages_in"]) for r in rows) == total["messages_in"]

        # A reversed range: the API's reason, shown in the page.
        page.locator("#since").fill(UNTIL.isoformat())
        page.locator("#until").fill(SINCE.isoformat())
        page.get_by_role("button", name="Show").click()
        expect(page.locator("#range-error")).to_contain_text("is after until")
        assert elsewhere == [], elsewhere
        browser.close()

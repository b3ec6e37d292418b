"""The dashboard: `GET /v1/stats` on its own, then the page in a real headless browser
(Debian's chromium driven by Playwright, pointed at that executable: nothing is downloaded)
against the gateways tests/e2e/run.sh starts, with traffic. Screenshots at 1280 px and at
a phone's width are written to $E2E_ARTIFACTS (default target/e2e-artifacts).

Without chromium the browser tests skip, unless E2E_REQUIRE_BROWSER=1 (set by .ci/run),
which makes them fail instead.
"""

import json
import os
import pathlib
import shutil
import time
import urllib.error
import urllib.request

import openai
import pytest

GATEWAY = os.environ.get("E2E_GATEWAY")
KEYS = os.environ.get("E2E_KEYS")
ADMIN = "e2e-admin-key"
ARTIFACTS = pathlib.Path(os.environ.get("E2E_ARTIFACTS", "target/e2e-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(not GATEWAY, reason="run through tests/e2e/run.sh")


def stats(base, key=ADMIN):
    headers = {"Authorization": "Bearer " + key} if key else {}
    req = urllib.request.Request(base + "/v1/stats", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def settled(base, requests, key=ADMIN):
    """The report once it counts `requests` requests (the writer thread batches)."""
    for _ in range(100):
        status, body = stats(base, key)
        assert status == 200, body
        if body["totals"]["requests"] >= requests:
            return body
        time.sleep(0.05)
    raise AssertionError(f"stats never reached {requests} requests: {body['totals']}")


def chat(base, content, key="unused"):
    c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=20)
    return c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": content}])


def test_the_stats_report_counts_what_was_answered():
    before = settled(GATEWAY, 0)
    n0 = before["totals"]["requests"]
    answers = [chat(GATEWAY, f"stats probe {i}: name a prime number above {i}") for i in range(5)]
    after = settled(GATEWAY, n0 + 5)
    assert after["totals"]["requests"] == n0 + 5
    ids = [a.headers["x-routewise-decision-id"] for a in answers]
    assert [d["decision_id"] for d in after["recent"][:5]] == ids[::-1]
    first = after["recent"][4]
    assert first["model"] == answers[0].headers["x-routewise-model"]
    assert first["predictions"] and first["reason"] == "routed"
    # Per model: the five answers are where the headers say.
    for model in {a.headers["x-routewise-model"] for a in answers}:
        count = sum(a.headers["x-routewise-model"] == model for a in answers)
        old = next(m["requests"] for m in before["models"] if m["name"] == model)
        new = next(m["requests"] for m in after["models"] if m["name"] == model)
        assert new - old == count
    # This run is younger than the 5-minute window: the series holds every request.
    assert sum(b["requests"] for b in after["series"]) == after["totals"]["requests"]
    t = after["totals"]
    assert t["spend_usd"] > 0 and t["reference_model"]
    assert t["savings_usd"] == pytest.approx(t["reference_cost_usd"] - t["spend_usd"])
    f = after["frontier"]
    assert f["samples"] > 0 and f["operating"]["lambda"] == 100
    costs = [p["cost_usd"] for p in f["points"]]
    assert costs == sorted(costs, reverse=True), "cost falls as lambda grows"


def test_the_stats_report_needs_the_admin_key_when_keys_are_on():
    status, body = stats(KEYS, None)
    assert status == 401, body
    assert body["error"]["code"] == "invalid_admin_key"
    status, body = stats(KEYS, ADMIN)
    assert status == 200, body
    assert isinstance(body["keys"], list)
    assert all({"key", "spend_usd", "budget_usd", "period_ends"} <= set(k) for k in body["keys"])


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        if os.environ.get("E2E_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, base, width, height=900, login=True):
    """The dashboard; the gateways run with an admin key, which the page asks for."""
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # The first poll, before the key is given, is refused (401): not an error of the page.
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and "401" not in m.text else None)
    page.goto(base + "/dashboard")
    if login:
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#admin-key", ADMIN)
        page.keyboard.press("Enter")
    return page, errors


def usd(x):
    """The page's money format."""
    a = abs(x)
    digits = 2 if a >= 100 else 3 if a >= 1 else 4 if a >= 0.01 else 6
    return f"${x:.{digits}f}"


def test_the_page_shows_the_reported_numbers(browser):
    _, before = stats(GATEWAY)
    for i in range(3):
        chat(GATEWAY, f"dashboard traffic {i}")
    settled(GATEWAY, before["totals"]["requests"] + 3)
    page, errors = open_page(browser, GATEWAY, 1280)
    page.wait_for_selector("body[data-loaded]")
    page.click("[data-testid=pause]")  # freeze the page: no refresh after this
    assert page.get_attribute("[data-testid=pause]", "aria-pressed") == "true"
    status, report = stats(GATEWAY)
    assert status == 200
    t = report["totals"]
    tile = lambda name: page.inner_text(f"[data-testid=tile-{name}] .value")  # noqa: E731
    assert tile("requests") == str(t["requests"])
    assert tile("errors") == str(t["errors"])
    assert tile("skips") == f"{t['quota_skips']} / {t['budget_skips']}"
    assert tile("spend") == usd(t["spend_usd"])
    assert tile("reference") == usd(t["reference_cost_usd"])
    saved = f"{usd(t['savings_usd'])} ({100 * t['savings_usd'] / t['reference_cost_usd']:.1f}%)"
    assert tile("savings").replace("\n", " ") == saved
    assert tile("cache") == f"{100 * t['cache_hit_rate']:.1f}%"
    for m in report["models"]:
        row = page.locator(f'[data-testid=models] tr[data-model="{m["name"]}"]')
        assert row.locator("[data-testid=model-requests]").inner_text() == str(m["requests"])
    rows = page.locator("[data-testid=recent] tbody tr")
    assert rows.count() == len(report["recent"])
    assert rows.first.get_attribute("data-decision") == report["recent"][0]["decision_id"]
    mix = page.locator("[data-testid=mix-item]")
    counts = {}
    for b in report["series"]:
        for model, n in b["models"]:
            counts[model] = counts.get(model, 0) + n
    assert {mix.nth(i).get_attribute("data-model"): int(mix.nth(i).get_attribute("data-count"))
            for i in range(mix.count())} == counts
    frontier = page.locator("[data-testid=frontier-chart] svg")
    assert frontier.locator("circle.frontier-point").count() == len(report["frontier"]["points"])
    assert frontier.locator("rect.single-point").count() == len(report["models"])
    assert frontier.locator("circle.operating-point").count() == 1
    assert "lambda 100" in frontier.get_attribute("aria-label")
    assert page.locator("[data-testid=rate-chart] svg rect").count() > 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-1280.png"), full_page=True)

    # Keyboard: Tab reaches a decision; Enter opens its explanation.
    page.focus("body")
    for _ in range(200):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.tagName") == "SUMMARY":
            break
    else:
        raise AssertionError("Tab never reached a decision")
    page.keyboard.press("Enter")
    opened = page.locator("[data-testid=recent] details[open]")
    assert opened.count() == 1
    assert "predictions:" in opened.locator("[data-testid=explanation]").inner_text()
    assert errors == []


def test_keyboard_focus_survives_the_live_refresh(browser):
    page, errors = open_page(browser, GATEWAY, 1280)
    page.wait_for_selector("#recent-body summary")
    for _ in range(200):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.tagName") == "SUMMARY":
            break
    focused = page.evaluate("document.activeElement.closest('tr').dataset.decision")
    loaded = page.get_attribute("body", "data-loaded")
    # (wait_for_function evaluates a string, which the page's CSP forbids: poll instead)
    for _ in range(100):
        if page.get_attribute("body", "data-loaded") != loaded:
            break
        page.wait_for_timeout(100)
    else:
        raise AssertionError("the page did not refresh within 10 s")
    assert page.evaluate("document.activeElement.tagName") == "SUMMARY"
    assert page.evaluate("document.activeElement.closest('tr').dataset.decision") == focused
    assert errors == []


def test_the_page_is_readable_at_a_phones_width(browser):
    page, errors = open_page(browser, GATEWAY, 390, 844)
    page.wait_for_selector("body[data-loaded]")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.is_visible("[data-testid=tile-requests]")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-390.png"), full_page=True)
    assert errors == []


def test_with_keys_on_the_page_asks_for_the_admin_key_then_lists_the_keys(browser):
    req = urllib.request.Request(
        KEYS + "/admin/keys", method="POST",
        data=json.dumps({"name": "dashboard-team", "budget_usd": 1.0, "period": "day"}).encode(),
        headers={"Authorization": "Bearer " + ADMIN, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        key = json.load(r)["key"]
    chat(KEYS, "spend a little", key=key)
    for _ in range(100):  # the spend settles off the response path
        _, report = stats(KEYS, ADMIN)
        mine = [k for k in report["keys"] if k["key"] == "dashboard-team"]
        if mine and mine[0]["spend_usd"] > 0:
            break
        time.sleep(0.05)
    assert mine and mine[0]["spend_usd"] > 0 and mine[0]["budget_usd"] == 1.0
    page, errors = open_page(browser, KEYS, 1280, login=False)
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#admin-key", ADMIN)
    page.keyboard.press("Enter")
    page.wait_for_selector("body[data-loaded]")
    page.click("[data-testid=pause]")
    _, report = stats(KEYS, ADMIN)
    names = sorted(k["key"] for k in report["keys"])
    shown = sorted(page.locator("[data-testid=keys] tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.key)"))
    assert shown == names
    row = page.locator('[data-testid=keys] tr[data-key="dashboard-team"]')
    spend = next(k["spend_usd"] for k in report["keys"] if k["key"] == "dashboard-team")
    assert row.locator("[data-testid=key-spend]").inner_text() == f"${spend:.6f}"
    meter = row.locator("[role=meter]")
    assert float(meter.get_attribute("aria-valuenow")) == pytest.approx(100 * spend, abs=0.05)
    page.screenshot(path=str(ARTIFACTS / "dashboard-keys-1280.png"), full_page=True)
    assert errors == []

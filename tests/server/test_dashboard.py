"""The dashboard of `fleetbus serve --http`, with real parts: a hub (`fleetbus hub`), the
server (`fleetbus serve --http`) and Debian's Chromium, driven headless by Playwright.

The browser logs in through the form, sees a dispatched run start and complete without a
reload (server-sent events), reads its log tail, freezes dispatch (the hub then says
frozen), kills a queued run and unfreezes. Plain HTTP requests check the refusals: no
token (401), a foreign Origin (403) or Host (421), a POST without the token or from
another origin (refused, nothing changed), a log that is a symbolic link (not followed).

Each test starts its own hub, server and browser and stops them (by their processes) in
its fixtures' teardown; runs a failed test left behind are reaped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from fleetbus.bus.blockingclient import BlockingClient
from fleetbus.bus.paths import Home
from fleetbus.testing.hub import hub_process
from fleetbus.testing.processes import reap_runs, wait_for
from fleetbus.testing.serving import Served, serve_http

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000  # Playwright's waits, per condition
FAKE_RUN = {"agent": "fake", "workspace": "demo/w1", "prompt": "sleep 2; echo hi"}


# -- helpers ----------------------------------------------------------------------------------


def chromium_path() -> str:
    """Debian's Chromium (`apt-get install chromium`); the test fails without it."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "Chromium is missing: the dashboard test drives /usr/bin/chromium; install it "
        "(as root: apt-get install -y chromium; scripts/test does)",
        pytrace=False,
    )


def perform(home: Path, action: str, payload: Any = None) -> Any:
    """One action on the home's hub, over its socket."""
    with BlockingClient.open(Home(home).socket) as hub:
        return hub.call("perform", {"action": action, "input": payload}, timeout=30)


def run_of(home: Path, run_id: str) -> dict[str, Any]:
    runs: list[dict[str, Any]] = perform(home, "runner.status", {"run_id": run_id})["runs"]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def served(home: Path, env: dict[str, str]) -> Iterator[Served]:
    """A hub and `fleetbus serve --http` on it (the token from the home's token file)."""
    try:
        with hub_process(home, env), serve_http(env) as server:
            server.token = (home / "token").read_text().strip()
            yield server
            assert server.token not in "".join(server.stderr), "the token is in the log"
    finally:
        reap_runs(home)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium context (fresh profile), closed after the test."""
    executable = chromium_path()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[dev]'", pytrace=False)
    expect.set_options(timeout=WAIT_MS)
    with tempfile.TemporaryDirectory(prefix="fb-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


# -- in the browser ---------------------------------------------------------------------------
def test_the_page_shows_runs_live_and_controls_dispatch(
    home: Path, served: Served, browser: Any
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url.removeprefix(served.base)))
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))

    # without the login, / is the login form (401); the form posts the token, not a URL
    first = page.goto(f"{served.base}/")
    assert first is not None and first.status == 401, first
    page.fill("#token", served.token)
    with page.expect_navigation() as navigation:
        page.click("button[type=submit]")
    landed = navigation.value
    assert landed is not None and landed.status == 200, (landed, page.url, page.content())
    assert page.url == f"{served.base}/", page.url
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page.locator('.lane[data-lane="fake"]')).to_contain_text("0 / 4")
    assert served.token not in page.content()
    assert not any(served.token in url for url in requests), requests
    [cookie] = [c for c in browser.cookies() if c["name"] == f"fleetbus_dashboard_{served.port}"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert served.token not in cookie["value"], "the cookie holds the raw token"
    page.evaluate("window.notReloaded = true")

    # a run dispatched through the hub shows up running, then completed, without a reload
    run_id = perform(home, "runner.dispatch", FAKE_RUN)["run_id"]
    row = page.locator(f'#runs tr[data-run-id="{run_id}"]')
    expect(row).to_have_attribute("data-status", "running")
    expect(row).to_contain_text("demo/w1")
    expect(page.locator('.lane[data-lane="fake"]')).to_contain_text("1 / 4")
    expect(row).to_have_attribute("data-status", "completed", timeout=30_000)
    expect(row.locator("td.exit")).to_have_text("0")
    expect(row.locator("td.elapsed")).to_have_text(re.compile(r"^[234]s$"))
    expect(page.locator("#events")).to_contain_text(run_id)
    assert page.evaluate("window.notReloaded") is True, "the page was reloaded"

    # selecting it shows the tail of its log
    row.click()
    expect(page.locator("#log")).to_contain_text("hi")
    expect(page.locator("#log")).to_contain_text("fake agent done")

    # the freeze button freezes dispatch: the hub says so
    page.click("#freeze")
    expect(page.locator("#dispatch")).to_have_attribute("data-frozen", "true")
    assert wait_for(lambda: perform(home, "runner.status", {"limit": 0})["frozen"], 10)

    # a run dispatched now waits in the queue; its Kill button cancels it
    queued_id = perform(home, "runner.dispatch", {**FAKE_RUN, "prompt": "echo later"})["run_id"]
    expect(page.locator(f'#queue li[data-run-id="{queued_id}"]')).to_contain_text("demo/w1")
    page.locator(f'button.kill[data-run-id="{queued_id}"]').click()
    queued_row = page.locator(f'#runs tr[data-run-id="{queued_id}"]')
    expect(queued_row).to_have_attribute("data-status", "cancelled")
    expect(page.locator(f'#queue li[data-run-id="{queued_id}"]')).to_have_count(0)
    assert dialogs == [f"Kill run {queued_id}?"], dialogs
    assert run_of(home, queued_id)["status"] == "cancelled"

    page.click("#unfreeze")
    expect(page.locator("#dispatch")).to_have_attribute("data-frozen", "false")
    assert not perform(home, "runner.status", {"limit": 0})["frozen"]

    # one event stream, no polling, no reload
    assert requests.count("/events") == 1, requests
    assert not [u for u in requests if u.startswith("/api/status")], requests
    assert page.evaluate("window.notReloaded") is True
    # no CSP violation, no script error (the one 401 is the first visit's, before the login)
    errors = [c for c in console if c.startswith("error") and "status of 401" not in c]
    assert not errors, console


# -- refusals ---------------------------------------------------------------------------------
def test_refusals_without_the_token_or_from_elsewhere(home: Path, served: Served) -> None:
    base, token = served.base, served.token
    bearer = {"Authorization": f"Bearer {token}"}
    perform(home, "runner.stop")  # frozen: a dispatched run stays queued
    run_id = perform(home, "runner.dispatch", FAKE_RUN)["run_id"]

    def unchanged() -> None:
        status = perform(home, "runner.status", {"run_id": run_id})
        assert status["frozen"] is True, status
        assert status["runs"][0]["status"] == "queued", status

    with httpx2.Client(timeout=20) as http:
        # no token: the login page for /, a JSON error for the API and the event stream
        page = http.get(f"{base}/")
        assert page.status_code == 401, page.text
        assert 'action="/login"' in page.text and token not in page.text
        for path in ("/api/status", "/events", f"/api/runs/{run_id}/log", "/static/app.js"):
            r = http.get(f"{base}{path}")
            assert r.status_code == 401, (path, r.text)
            if path != "/static/app.js":
                assert "log in" in r.json()["error"], r.text
        wrong = http.get(f"{base}/api/status", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, wrong.text
        assert "bearer token" in wrong.json()["error"]

        # a foreign Origin or Host, even with the token
        for path in ("/", "/api/status", "/events"):
            r = http.get(f"{base}{path}", headers={**bearer, "Origin": "http://evil.example"})
            assert r.status_code == 403, (path, r.text)
            assert "origin" in r.json()["error"], r.text
        evil_host = http.get(f"{base}/api/status", headers={**bearer, "Host": "evil.example"})
        assert evil_host.status_code == 421, evil_host.text

        # state-changing requests without the token change nothing
        for path, body in (
            ("/api/unfreeze", None),
            ("/api/kill", {"run_id": run_id}),
            ("/api/freeze", None),
        ):
            r = http.post(f"{base}{path}", json=body)
            assert r.status_code == 401, (path, r.text)
            unchanged()
        # ... nor a GET with it
        r = http.get(f"{base}/api/unfreeze", headers=bearer)
        assert r.status_code == 405 and "POST" in r.json()["error"], r.text
        unchanged()

        # the login form: a wrong token gets no cookie; the right one a hashed HttpOnly one
        refused = http.post(f"{base}/login", data={"token": "not-it"})
        assert refused.status_code == 401 and "set-cookie" not in refused.headers
        login = http.post(f"{base}/login", data={"token": token})
        assert login.status_code == 303 and login.headers["location"] == "/", login.text
        set_cookie = login.headers["set-cookie"]
        assert token not in set_cookie, "the cookie holds the raw token"
        assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie, set_cookie
        cookie = {"Cookie": set_cookie.split(";")[0]}
        status = http.get(f"{base}/api/status", headers=cookie)
        assert status.status_code == 200 and status.json()["frozen"] is True, status.text

        # with the cookie, a POST from another origin (another port is the same site) or
        # without an Origin is refused; from the dashboard's own origin it works
        for origin in ({"Origin": "http://127.0.0.1:1"}, {}):
            r = http.post(f"{base}/api/unfreeze", headers={**cookie, **origin})
            assert r.status_code == 403 and "same origin" in r.json()["error"], r.text
            unchanged()
        own = {**cookie, "Origin": base}
        r = http.post(f"{base}/api/kill", headers=own, json={})
        assert r.status_code == 400 and "run_id" in r.json()["error"], r.text
        unchanged()
        r = http.post(f"{base}/api/kill", headers=own, json={"run_id": run_id})
        assert r.status_code == 200 and r.json()["cancelled"] == 1, r.text
        assert run_of(home, run_id)["status"] == "cancelled"
        r = http.post(f"{base}/api/unfreeze", headers=bearer)
        assert r.status_code == 200 and r.json()["frozen"] is False, r.text


def test_a_log_behind_a_symbolic_link_is_not_read(home: Path, served: Served) -> None:
    secret = home.parent / "secret.txt"
    secret.write_text("SECRET CONTENT\n")
    bearer = {"Authorization": f"Bearer {served.token}"}
    first, second = (
        str(perform(home, "runner.dispatch", {**FAKE_RUN, "prompt": f"echo run {n}"})["run_id"])
        for n in range(2)
    )

    def completed(run_id: str) -> bool:
        return bool(run_of(home, run_id)["status"] == "completed")

    assert wait_for(lambda: completed(first) and completed(second)), (first, second)

    with httpx2.Client(timeout=20, headers=bearer) as http:
        tail = http.get(f"{served.base}/api/runs/{first}/log").json()
        assert "run 0" in tail["log"] and not tail["problem"], tail

        # the log file replaced by a link to another file
        log = home / "runs" / first / "output.log"
        log.unlink()
        log.symlink_to(secret)
        tail = http.get(f"{served.base}/api/runs/{first}/log").json()
        assert "symbolic link" in tail["problem"] and "SECRET" not in json.dumps(tail), tail

        # the run's directory replaced by a link to a directory holding an output.log
        elsewhere = home.parent / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "output.log").write_text("SECRET CONTENT\n")
        run_dir = home / "runs" / second
        shutil.rmtree(run_dir)
        run_dir.symlink_to(elsewhere)
        tail = http.get(f"{served.base}/api/runs/{second}/log").json()
        assert "symbolic link" in tail["problem"] and "SECRET" not in json.dumps(tail), tail

        missing = http.get(f"{served.base}/api/runs/no-such-run/log")
        assert missing.status_code == 404, missing.text

"""The web UI in a real browser (headless Chromium) against real `sluice up` and `sluice agent`
processes: logging in, live lists and DAGs, logs, the run form, cancelling, pausing triggers, what a
read token may not do, and what another site's page may not do."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Page, expect

from tests.browser.browsing import logged_in, screenshot
from tests.browser.documents import EVERY_THREE_SECONDS
from tests.e2e.sluice import SluiceUp, api_all, api_get, api_request, apply, cli, get_run, wait_run

pytestmark = pytest.mark.browser

JSON = {"Content-Type": "application/json"}
RUN_PAGE = re.compile(r"/runs/([0-9a-f-]{36})$")


def start(sluice: SluiceUp, pipeline: str, params: dict | None = None) -> str:
    """Start a run through the API (quicker than the CLI's interpreter start); returns its id."""
    request = api_request(
        f"/pipelines/{pipeline}/runs",
        sluice.client_env,
        data=json.dumps({"params": params or {}}).encode(),
        method="POST",
        headers=JSON,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["run_id"]


def cancel(sluice: SluiceUp, run_id: str) -> None:
    request = api_request(
        f"/runs/{run_id}/cancel", sluice.client_env, data=b"{}", method="POST", headers=JSON
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_log_in_with_a_token(page: Page, published: SluiceUp, tokens: dict[str, str]) -> None:
    page.goto(f"{published.api_url}/login")
    screenshot(page, "login")
    page.fill("#token", "slc_not-a-token")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/login")) as sent:
        page.click("#login button[type=submit]")
    assert sent.value.status == 401
    expect(page.locator(".error-message")).to_have_text("That token is not valid.")
    assert page.context.cookies() == []

    page.fill("#token", tokens["run"])
    page.click("#login button[type=submit]")
    expect(page).to_have_url(f"{published.api_url}/")
    expect(page.locator("header .scope strong")).to_have_text("run")
    expect(page.locator("table#runs")).to_be_visible()
    [cookie] = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("sluice_session", True, "Strict")


def test_pages_need_a_login_and_an_unknown_run_is_a_page(page: Page, published: SluiceUp, tokens) -> None:
    response = page.goto(f"{published.api_url}/runs/x")
    assert response.request.redirected_from.url == f"{published.api_url}/runs/x"
    assert page.url.split("?")[0] == f"{published.api_url}/login"
    expect(page.locator('#login input[name="next"]')).to_have_value("/runs/x")

    logged_in(page, published.api_url, tokens["read"])
    missing = uuid.uuid4()
    response = page.goto(f"{published.api_url}/runs/{missing}")
    assert response.status == 404
    assert response.headers["content-type"].startswith("text/html")
    expect(page.locator("h1")).to_contain_text("404")
    expect(page.locator(".error-message")).to_contain_text(str(missing))


def test_a_cron_run_appears_in_the_list_without_a_reload(
    page: Page, published: SluiceUp, tokens: dict[str, str]
) -> None:
    env = published.client_env
    logged_in(page, published.api_url, tokens["admin"])
    expect(page.locator("[data-live-state]")).to_have_text("live")
    page.evaluate("window.__marker = 'still the same page'")
    fired = page.locator('#runs tbody tr[data-run-id]:has(a[href="/triggers/web-every-3s"])')
    expect(fired).to_have_count(0)

    apply(EVERY_THREE_SECONDS, env)
    try:
        expect(fired.first).to_be_visible(timeout=10_000)
        expect(fired.and_(page.locator('[data-status="succeeded"]')).first).to_be_visible()
    finally:
        paused = cli("triggers", "pause", "web-every-3s", env=env)
        assert paused.returncode == 0, paused.stderr
    assert page.evaluate("window.__marker") == "still the same page"
    run_id = fired.first.get_attribute("data-run-id")
    assert get_run(run_id, env)["trigger"] == "web-every-3s"
    screenshot(page, "runs")


def test_a_run_dag_goes_green_and_a_step_shows_its_log(
    page: Page, published: SluiceUp, tokens: dict[str, str]
) -> None:
    logged_in(page, published.api_url, tokens["read"])
    run_id = start(published, "web-train")
    page.goto(f"{published.api_url}/runs/{run_id}")

    train = page.locator('#dag svg g.step[data-step="train"]')
    expect(train).to_have_attribute("data-status", "running")
    expect(page.locator("#run-summary")).to_have_attribute("data-status", "running")
    expect(page.locator("#run-summary")).to_have_attribute("data-status", "succeeded")
    for step in ("fetch", "train", "evaluate", "report"):
        expect(page.locator(f'#dag svg g.step[data-step="{step}"]')).to_have_attribute(
            "data-status", "succeeded"
        )
        expect(page.locator(f'#steps tr[data-step="{step}"]')).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#run-status")).to_contain_text("succeeded")
    screenshot(page, "run")

    page.click('#steps tr[data-step="train"] a')
    expect(page).to_have_url(f"{published.api_url}/runs/{run_id}/steps/train")
    expect(page.locator("pre#log")).to_contain_text("epoch 1 loss 0.50\nepoch 2 loss 0.25")
    expect(page.locator("#log-state")).to_contain_text("the log is complete")
    expect(page.locator("#attempts")).to_be_visible()
    screenshot(page, "step")


def test_start_a_run_from_the_params_form(page: Page, published: SluiceUp, tokens: dict[str, str]) -> None:
    env = published.client_env
    logged_in(page, published.api_url, tokens["run"], then="/pipelines/web-typed")
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    screenshot(page, "pipeline")

    page.fill('#start-run input[name="epochs"]', "abc")
    page.click("#start-run-button")
    expect(page.locator("#flash")).to_be_visible()
    expect(page.locator("#flash")).to_contain_text("params.epochs: must be an integer, not 'abc'")
    assert page.locator("#flash").inner_text().count("must be an integer") == 1
    screenshot(page, "pipeline-refused")
    expect(page).to_have_url(f"{published.api_url}/pipelines/web-typed")
    assert api_all("/runs?pipeline=web-typed", env) == []

    page.fill('#start-run input[name="epochs"]', "7")
    page.click("#start-run-button")
    expect(page).to_have_url(RUN_PAGE)
    run_id = RUN_PAGE.search(page.url).group(1)
    expect(page.locator("#run-summary")).to_have_attribute("data-status", "succeeded")
    assert get_run(run_id, env)["params"] == {"epochs": 7, "label": "nightly"}
    assert [run["id"] for run in api_all("/runs?pipeline=web-typed", env)] == [run_id]


def test_cancel_a_run(page: Page, published: SluiceUp, tokens: dict[str, str]) -> None:
    run_id = start(published, "web-sleeper")
    logged_in(page, published.api_url, tokens["run"], then=f"/runs/{run_id}")
    expect(page.locator('#steps tr[data-step="sleep"]')).to_have_attribute("data-status", "running")
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#cancel-run")
    expect(page.locator("#run-summary")).to_have_attribute("data-status", "cancelled")
    assert dialogs == ["Cancel this run? Its running steps are stopped."]
    expect(page.locator("#cancel-run")).to_have_count(0)
    assert wait_run(run_id, published.client_env, ("cancelled",))["status"] == "cancelled"


@pytest.fixture
def elsewhere() -> Iterator[tuple[str, list[str]]]:
    """A page of another origin (another port on the same host: the same *site*, so even the
    SameSite=Strict cookie goes with its requests), served with whatever HTML the test puts in the
    list."""
    html: list[str] = [""]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html[0].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="elsewhere", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", html
    finally:
        server.shutdown()
        server.server_close()


def test_a_read_token_gets_no_buttons_and_forged_posts_are_refused(
    page: Page, published: SluiceUp, tokens: dict[str, str], elsewhere
) -> None:
    env = published.client_env
    url = published.api_url
    run_id = start(published, "web-sleeper")
    try:
        logged_in(page, url, tokens["read"])
        expect(page.locator("header .scope strong")).to_have_text("read")
        for path in ("/", f"/runs/{run_id}", "/pipelines/web-typed", "/triggers", "/triggers/web-nightly"):
            page.goto(url + path)
            expect(page.locator("main h1")).to_be_visible()
            expect(page.locator("button.action")).to_have_count(0)
            expect(page.locator("#start-run, #cancel-run, #run-again")).to_have_count(0)

        page.goto(f"{url}/runs/{run_id}")
        status = page.evaluate(
            """async (id) => (await fetch(`/api/v1/runs/${id}/cancel`,
                 {method: "POST", headers: {"Content-Type": "application/json"}})).status""",
            run_id,
        )
        assert status == 403

        # Another site's page, in a browser whose session could cancel the run: refused all the same.
        logged_in(page, url, tokens["run"])
        page_url, html = elsewhere
        html[0] = (
            f'<form id="forged" method="post" action="{url}/api/v1/runs/{run_id}/cancel">'
            '<input name="x" value="1"><button type="submit">win a prize</button></form>'
        )
        page.goto(page_url)
        with page.expect_response(lambda r: r.url.endswith(f"/runs/{run_id}/cancel")) as forged:
            page.click("#forged button")
        assert forged.value.status in (401, 403)
        assert "sluice_session=" in forged.value.request.all_headers().get("cookie", "")
        assert get_run(run_id, env)["status"] == "running"
    finally:
        cancel(published, run_id)


def test_pause_and_resume_a_trigger(page: Page, published: SluiceUp, tokens: dict[str, str]) -> None:
    logged_in(page, published.api_url, tokens["run"], then="/triggers")
    row = page.locator('#triggers tr[data-trigger="web-nightly"]')
    expect(row).to_have_attribute("data-paused", "false")
    screenshot(page, "triggers")

    row.locator("button.action.pause").click()
    expect(row).to_have_attribute("data-paused", "true")
    assert published_trigger(published)["paused"] is True
    expect(row.locator("button.action.pause")).to_have_count(0)

    row.locator("button.action.resume").click()
    expect(row).to_have_attribute("data-paused", "false")
    assert published_trigger(published)["paused"] is False

    row.locator("a", has_text="web-nightly").click()
    expect(page.locator("h1")).to_have_text("Trigger web-nightly")
    screenshot(page, "trigger")


def published_trigger(sluice: SluiceUp) -> dict:
    return api_get("/triggers/web-nightly", sluice.client_env)


def test_agents_and_pipelines_pages(page: Page, published: SluiceUp, tokens: dict[str, str]) -> None:
    logged_in(page, published.api_url, tokens["read"], then="/agents")
    expect(page.locator('article.agent[data-agent="web"]')).to_be_visible()
    screenshot(page, "agents")
    page.goto(f"{published.api_url}/pipelines")
    for name in ("web-train", "web-typed", "web-sleeper", "web-tick"):
        expect(page.locator(f'a[href="/pipelines/{name}"]')).to_be_visible()
    screenshot(page, "pipelines")

"""Real `sluice up` and `sluice agent` processes, and a headless Chromium driving their web UI.

One daemon, one agent and one Chromium serve the whole module (each test uses pipelines and runs
of its own); each test gets a fresh browser context (no cookie carries over).
Without Chromium the tests skip, unless SLUICE_REQUIRE_BROWSER=1 (CI, which
installs it): then they fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.browser.browsing import CHROMIUM_ARGS, WAIT_MS, chromium
from tests.e2e.sluice import FAST_TIMINGS, SluiceUp, apply, cli, sluice_agents, sluice_ups, user_env
from tests.requirements import unavailable

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium (never downloaded: the system's), launched once per module, not per
    session: while Playwright's sync API is started, its own event loop counts as the running one,
    so pytest-asyncio could run no async test after this module's until it stops."""
    executable = chromium()
    if executable is None:
        unavailable(
            "no Chromium: SLUICE_CHROMIUM, or chromium on PATH (apt-get install chromium)",
            "SLUICE_REQUIRE_BROWSER",
        )
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A page in a fresh browser context: no cookie, no storage from another test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def sluice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceUp]:
    """A daemon (`sluice up --agents 0`, fast timings) and one agent with room for many steps at
    once, shared by the module's tests."""
    directory = tmp_path_factory.mktemp("browser")
    env = user_env(directory / "home")
    with (
        sluice_ups(directory, env) as sluice_up,
        sluice_agents(directory) as sluice_agent,
    ):
        daemon = sluice_up("--agents", "0", env=env | FAST_TIMINGS)
        sluice_agent(daemon, "web", "--cpus", "16", "--executor", "process")
        yield daemon


@pytest.fixture(scope="module")
def tokens(sluice: SluiceUp) -> dict[str, str]:
    """A token per scope: ``admin`` (the data dir's), and ``read``, ``run`` and ``publish`` made with
    `sluice tokens create`."""
    made = {"admin": (sluice.data_dir / "credentials" / "api-token").read_text().strip()}
    for scope in ("read", "run", "publish"):
        result = cli("tokens", "create", f"web-{scope}", "--scope", scope, env=sluice.client_env)
        assert result.returncode == 0, result.stderr
        made[scope] = result.stdout.strip()
    return made


@pytest.fixture(scope="module")
def published(sluice: SluiceUp) -> SluiceUp:
    """The daemon with the module's pipelines and a (nightly) trigger applied."""
    from tests.browser.documents import DOCUMENTS

    apply(DOCUMENTS, sluice.client_env)
    return sluice

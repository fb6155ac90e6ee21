"""What the browser tests do as a person would: log in with a token, look at a page and keep a
picture of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import Page, expect

SCREENSHOTS = Path(__file__).with_name("screenshots")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 15_000
"""The longest any expectation waits for the page (a step that sleeps 2 s included)."""


def chromium() -> str | None:
    """The Chromium the tests drive: SLUICE_CHROMIUM, else the system's (Debian: apt chromium)."""
    return shutil.which(os.environ.get("SLUICE_CHROMIUM") or "chromium")


def logged_in(page: Page, url: str, token: str, then: str = "/") -> Page:
    """Log ``page`` in to the daemon at ``url`` with ``token`` through the login form, landing on
    ``then``."""
    page.goto(f"{url}/login?next={then}")
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    expect(page.locator("header .scope")).to_be_visible()
    return page


def screenshot(page: Page, name: str) -> None:
    """A full-page picture of what the person sees, in screenshots/ (git-ignored) for a human to look at."""
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)

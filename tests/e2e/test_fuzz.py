"""The API under generated input: Schemathesis sends what its OpenAPI document allows and what it
does not, as an admin, and no answer may be a server error."""

from __future__ import annotations

import re

import pytest

from tests.e2e.sluice import HELLO, apply, fuzz

pytestmark = pytest.mark.e2e


def test_generated_requests_never_get_a_server_error(sluice_up) -> None:
    sluice = sluice_up()
    apply(HELLO, sluice.client_env)
    token = (sluice.data_dir / "credentials" / "api-token").read_text().strip()

    result = fuzz(sluice.api_url, token, examples=15)

    summary = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert result.returncode == 0, result.stdout[-6000:]
    assert summary is not None, result.stdout[-2000:]
    assert int(summary.group(1)) >= 500  # a few hundred cases at least, each answered below 500
    assert not sluice.log_lines("api_request_failed")

"""`sluice daemon --help` and `sluice agent --help` name every variable their process reads, so that
the deployment files, checked against the help (tests/deploy/usage.py), can use any of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.usage import help_text

ROOT = Path(__file__).resolve().parents[2]
CLI_ONLY = {"SLUICE_API_URL"}
"""Read by Settings for the CLI's sake; the daemon does not use it."""


def variables_read_by(*modules: str) -> set[str]:
    return {
        name
        for module in modules
        for name in re.findall(r"\"(SLUICE_[A-Z_]+)\"", (ROOT / module).read_text())
    }


@pytest.mark.parametrize(
    ("command", "modules"),
    [
        (("daemon",), ("daemon/config.py", "kit/nats.py")),
        (("up",), ("daemon/config.py", "kit/nats.py")),
        (("agent",), ("runners/cli.py", "kit/nats.py")),
    ],
)
def test_help_names_every_variable_the_process_reads(
    command: tuple[str, ...], modules: tuple[str, ...]
) -> None:
    expected = variables_read_by(*modules) - CLI_ONLY
    text = help_text(command)

    assert expected, modules
    assert sorted(name for name in expected if not re.search(rf"\b{name}\b", text)) == []

"""What a deployment file asks of Sluice (a container's command and flags, the SLUICE_* variables it
sets) checked against the real `sluice … --help`, and the deployment tools the tests run when they
are installed (CI installs them and sets SLUICE_REQUIRE_DEPLOY_TOOLS=1: then a missing one fails)."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import click

from daemon.cli import main as sluice_cli
from tests.requirements import unavailable

SLUICE = str(Path(sys.executable).parent / "sluice")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@dataclasses.dataclass(frozen=True)
class Usage:
    """One container of a deployment file: where it is (for messages), its argv after the `sluice`
    entrypoint, and the names of the environment variables it is given."""

    where: str
    argv: tuple[str, ...]
    env: frozenset[str]


def command_path(argv: Iterable[str]) -> tuple[tuple[str, ...], list[str]]:
    """Splits ``argv`` into the subcommand path (``credentials init``) and what follows it, walking
    the CLI's groups as click does. Raises ``LookupError`` naming an unknown command."""
    command: click.Command = sluice_cli
    path: list[str] = []
    rest = list(argv)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        if sub is None:
            raise LookupError(f"sluice {' '.join([*path, rest[0]])}: no such command")
        path.append(rest.pop(0))
        command = sub
    return tuple(path), rest


@functools.cache
def help_text(path: tuple[str, ...]) -> str:
    """What `sluice PATH --help` prints, from the real executable."""
    result = subprocess.run(
        [SLUICE, *path, "--help"], capture_output=True, text=True, timeout=30, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def unknown_to_sluice(usage: Usage) -> list[str]:
    """Each command, flag and SLUICE_* variable of ``usage`` that its command's --help does not name."""
    try:
        path, rest = command_path(usage.argv)
    except LookupError as exc:
        return [f"{usage.where}: {exc}"]
    text = help_text(path)
    words = [arg.split("=", 1)[0] for arg in rest if arg.startswith("--")]
    words += sorted(name for name in usage.env if name.startswith("SLUICE_"))
    command = " ".join(["sluice", *path])
    return [
        f"{usage.where}: {word} is not in `{command} --help`"
        for word in words
        if not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text)
    ]


def deploy_tool(*names: str) -> str:
    """The first of ``names`` on PATH; skips the test without one, or fails it under
    SLUICE_REQUIRE_DEPLOY_TOOLS=1."""
    for name in names:
        if found := shutil.which(name):
            return found
    unavailable(f"none of {', '.join(names)} is installed", "SLUICE_REQUIRE_DEPLOY_TOOLS")

"""The layering the folders promise: the rules are pure, and what triggers and agents run never
imports the daemon."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import daemon.rules

ROOT = Path(__file__).resolve().parents[2]
IO = {"asyncpg", "nats", "aiohttp", "docker", "watchdog", "psutil", "pynvml"}


def imported(modules: list[str]) -> set[str]:
    """Top-level packages loaded by importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def test_the_rules_import_no_database_bus_or_server_library() -> None:
    rules = [f"daemon.rules.{info.name}" for info in pkgutil.iter_modules(daemon.rules.__path__)]
    assert len(rules) >= 8
    assert imported(rules) & IO == set()


def test_triggers_and_runners_never_import_the_daemon() -> None:
    for package in ("triggers", "runners"):
        modules = [
            ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for path in (ROOT / package).rglob("*.py")
            if path.name not in ("__init__.py", "__main__.py")
        ]
        assert "daemon" not in imported(modules), package

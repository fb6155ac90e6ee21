"""Fixtures shared by the unit tests: the fake Sluice API the CLI tests talk to."""

from tests.unit.fake_api import api, local_tz

__all__ = ["api", "local_tz"]

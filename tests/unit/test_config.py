"""Settings from the environment: values a daemon cannot run with are refused naming the variable."""

from __future__ import annotations

import pytest

from daemon.config import Settings


@pytest.mark.parametrize(("raw", "replicas"), [(None, 1), ("", 1), ("3", 3), (" 5 ", 5)])
def test_nats_replicas_default_to_one(raw: str | None, replicas: int) -> None:
    environ = {} if raw is None else {"SLUICE_NATS_REPLICAS": raw}

    assert Settings.from_env(environ).nats_replicas == replicas


@pytest.mark.parametrize("raw", ["0", "6", "-1", "2.5", "three", "²"])
def test_nats_replicas_outside_one_to_five_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=r"SLUICE_NATS_REPLICAS must be a whole number from 1 to 5"):
        Settings.from_env({"SLUICE_NATS_REPLICAS": raw})

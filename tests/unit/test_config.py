"""Settings from the environment: values a daemon cannot run with are refused naming the variable."""

from __future__ import annotations

import pytest

from daemon.config import Settings


@pytest.mark.parametrize(("raw", "replicas"), [(None, None), ("", None), ("3", 3), (" 5 ", 5)])
def test_nats_replicas_unset_are_none(raw: str | None, replicas: int | None) -> None:
    environ = {} if raw is None else {"SLUICE_NATS_REPLICAS": raw}

    assert Settings.from_env(environ).nats_replicas == replicas


@pytest.mark.parametrize("raw", ["0", "6", "-1", "2.5", "three", "²"])
def test_nats_replicas_outside_one_to_five_are_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=r"SLUICE_NATS_REPLICAS must be a whole number from 1 to 5"):
        Settings.from_env({"SLUICE_NATS_REPLICAS": raw})


@pytest.mark.parametrize(("raw", "token"), [(None, None), ("", None), (" \n", None), ("abc123\n", "abc123")])
def test_api_token_is_taken_without_surrounding_whitespace(raw: str | None, token: str | None) -> None:
    # A Kubernetes Secret made from `openssl rand -hex 32 > FILE` ends in a newline: the daemon and
    # the CLI in its pod must both take the token without it.
    environ = {} if raw is None else {"SLUICE_API_TOKEN": raw}

    assert Settings.from_env(environ).api_token == token


def test_the_cli_sends_the_token_without_its_newline() -> None:
    assert Settings.from_env({"SLUICE_API_TOKEN": "abc123\n"}).client_token() == "abc123"

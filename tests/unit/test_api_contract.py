"""The API's declared constraints, enforced before any handler runs, and the helpers of its access
checks (pure: no server)."""

from __future__ import annotations

import logging

import pytest
import structlog

from daemon.api.access import _host_name, granted
from daemon.api.contract import NAME, RUN_ID, VERSION, _check
from daemon.errors import BadRequest
from kit.logsetup import configure_logging


@pytest.mark.parametrize(
    ("raw", "schema", "problem"),
    [
        ("hello", NAME, None),
        ("Hello", NAME, "is not valid"),
        ("a\0b", NAME, "NUL"),
        ("3", VERSION, None),
        ("v3", VERSION, None),
        ("2147483648", VERSION, "between 1 and 2147483647"),
        ("0", VERSION, "between"),
        ("three", VERSION, "must be an integer"),
        ("0123abcd", RUN_ID, None),
        ("0123abc", RUN_ID, "is not valid"),
        ("weird", {"type": "string", "enum": ["queued", "running"]}, "must be one of queued, running"),
    ],
)
def test_parameters_outside_their_constraints_are_refused(
    raw: str, schema: dict, problem: str | None
) -> None:
    if problem is None:
        _check("p", raw, schema)
        return
    with pytest.raises(BadRequest, match=problem):
        _check("p", raw, schema)


def test_scopes_include_read_and_admin_includes_all() -> None:
    assert granted("run", "read")
    assert granted("publish", "read")
    assert granted("admin", "admin")
    assert not granted("run", "publish")
    assert not granted("publish", "run")
    assert not granted("read", "run")
    assert not granted(None, "read")


@pytest.mark.parametrize(
    ("host", "name"),
    [("127.0.0.1:8470", "127.0.0.1"), ("[::1]:8470", "::1"), ("localhost", "localhost"), ("::1", "::1")],
)
def test_the_host_name_of_a_host_header(host: str, name: str) -> None:
    assert _host_name(host) == name


def test_console_tracebacks_show_no_local_variables(capsys) -> None:
    configure_logging("console")
    try:
        secret = "-".join(["tb", "s3cret"])  # made at run time: only a local shows it
        raise RuntimeError(f"boom {len(secret)}")
    except RuntimeError:
        structlog.get_logger("test").exception("failed")
    finally:  # what the rest of the session logs with is not this test's business
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    printed = capsys.readouterr().err
    assert "RuntimeError" in printed
    assert "tb-s3cret" not in printed

"""``sluice plan`` and ``sluice triggers test``: what a run (or a trigger's event) would be now,
before anything is made — thin clients of ``POST /pipelines/{name}/plan`` and
``POST /triggers/{name}/test`` (``daemon.api.plans``), printed like ``sluice runs show``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from daemon.cli import catalog, output
from daemon.cli.commands import VERSION, api_client, json_option
from daemon.cli.http import path
from daemon.cli.runs import PARAM, cell_text, param_dict

STEP_COLUMNS = ("STEP", "STATUS", "REUSE", "FROM", "AGENT", "WAITING")
RESOLUTIONS = {
    "default": " (the default version now)",
    "pinned": " (pinned by the trigger)",
    "manual": " (asked for by version)",
}
OUTCOMES = {
    "run": "a run would be made",
    "held": "a run would be made held (at the concurrency limit, on_limit queue)",
    "skipped": "no run: skipped",
    "rejected": "no run: rejected",
    "duplicate": "no run: a duplicate",
    "ignored": "no event: the trigger's source would ignore it",
}


def register(group: click.Group) -> None:
    """Add ``plan`` to the ``sluice`` group and ``test`` to ``sluice triggers``."""
    group.add_command(plan)
    catalog.triggers.add_command(test)


@click.command()
@click.argument("name")
@click.option("--version", type=VERSION, help="Plan this version (3 or v3) instead of the default one.")
@click.option("-p", "--param", "params", type=PARAM, multiple=True, help="A parameter, as for sluice run.")
@click.option("--no-reuse", is_flag=True, help="Plan a run that executes every step.")
@json_option
@output.reports_errors
def plan(
    name: str, version: int | None, params: tuple[tuple[str, Any], ...], no_reuse: bool, as_json: bool
) -> None:
    """Show what `sluice run NAME` would do now, and make nothing.

    The version and how it was chosen, the parameters, each step reused (from which run) or
    executed (what changed), and the agent each ready step would go to now or why it would wait.
    """
    body: dict[str, Any] = {"params": param_dict(params), "reuse": not no_reuse}
    if version is not None:
        body["version"] = version
    _show(api_client().request("POST", path("pipelines", name, "plan"), json=body), as_json=as_json)


@click.command()
@click.argument("name")
@click.option("--event", "event", metavar="JSON", help="nats: the message's data; run: a run summary.")
@click.option("--subject", help="nats: the subject the message came on (default: the trigger's).")
@click.option("--file", "file", metavar="PATH", help="files: a path in the watched datastore.")
@click.option("--at", "at", metavar="TIME", help="cron: a fire time, ISO 8601 (default: the next fire).")
@json_option
@output.reports_errors
def test(
    name: str, event: str | None, subject: str | None, file: str | None, at: str | None, as_json: bool
) -> None:
    """Show what trigger NAME would do with an event now, and record nothing.

    Give what the trigger's source sees: --at for cron, --file for files, --event (JSON) for nats
    and run triggers.
    """
    given = [
        flag for flag, value in (("--event", event), ("--file", file), ("--at", at)) if value is not None
    ]
    if len(given) > 1:
        raise click.UsageError(f"give one of --event, --file and --at, not {' and '.join(given)}")
    body: dict[str, Any] = {}
    if event is not None:
        try:
            body["event"] = json.loads(event)
        except ValueError as error:
            raise click.BadParameter(f"not JSON: {error}", param_hint="'--event'") from None
    for key, value in (("subject", subject), ("file", file), ("at", at)):
        if value is not None:
            body[key] = value
    _show(api_client().request("POST", path("triggers", name, "test"), json=body), as_json=as_json)


def _show(answer: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        output.print_json(answer)
        return
    output.print_fields(_fields(answer))
    steps = answer.get("steps") or []
    if steps:
        click.echo()
        output.print_table(STEP_COLUMNS, [_step_cells(step) for step in steps], empty="")
        click.echo()
        output.print_table(
            ("STEP", "WHY"),
            [(s["name"], (s.get("reuse") or {}).get("reason") or "-") for s in steps],
            empty="",
        )


def _fields(answer: dict[str, Any]) -> list[tuple[str, str]]:
    fields = []
    if answer.get("trigger"):
        fields.append(("trigger", answer["trigger"]))
    if answer.get("version") is not None:
        version = f"{answer['pipeline']} v{answer['version']}" + RESOLUTIONS.get(
            answer.get("resolution") or "", ""
        )
        fields.append(("pipeline", version))
    outcome = OUTCOMES.get(answer["outcome"], answer["outcome"])
    fields.append(("outcome", outcome + (f": {answer['reason']}" if answer.get("reason") else "")))
    if answer.get("params") is not None:
        fields.append(("params", " ".join(f"{k}={cell_text(v)}" for k, v in answer["params"].items()) or "-"))
    if answer.get("ahead"):
        fields.append(("queue", f"{answer['ahead']} ready steps of other runs wait for agents first"))
    fields.append(("written", "nothing (a plan)"))
    return fields


def _step_cells(step: dict[str, Any]) -> Sequence[str]:
    reuse = step.get("reuse") or {}
    origin = step.get("reused_from")
    outcome = reuse.get("outcome") or "-"
    if (parts := step.get("partitions")) is not None:
        outcome = f"{parts['count']} partitions, {parts['reused']} reused"
    return (
        step["name"],
        step.get("status") or "-",
        outcome,
        f"run {origin['run_id'][:8]} {origin['step']}" if origin else "-",
        step.get("agent") or "-",
        step.get("waiting") or "",
    )

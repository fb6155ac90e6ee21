"""The `sluice` console script.

Exit status: 0 success, 1 a failed operation, 2 bad usage or bad input (contract §2).
"""

from __future__ import annotations

import click

from daemon.cli import agents, backfills, catalog, credentials, lineage, plans, runs, server, tokens
from runners.cli import agent


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sluice", prog_name="sluice")
def main() -> None:
    """Sluice: an event-driven scheduler for machine-learning pipelines.

    Commands other than up, daemon and agent talk to the daemon's API at SLUICE_API_URL (default
    http://127.0.0.1:8470) with the token SLUICE_API_TOKEN, else the token file of the data dir
    (SLUICE_DATA_DIR, default ~/.local/share/sluice).
    """


server.register(main)
catalog.register(main)
backfills.register(main)
runs.register(main)
lineage.register(main)
plans.register(main)
agents.register(main)
credentials.register(main)
tokens.register(main)
main.add_command(agent)

"""``python -m runners``: the agent alone, without loading the control plane (``sluice up`` starts
its local agents this way)."""

from runners.cli import agent

agent(prog_name="sluice agent")

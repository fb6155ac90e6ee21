"""Sluice's control plane: intake of events and requests, planning of runs by pure rules, dispatch
to agents, the store, the API and the CLI."""

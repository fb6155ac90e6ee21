"""Sluice's control plane: API, store, resolver, planner and dispatcher."""

"""From ready steps to agents and back: the dispatcher and its registry of agents' capacity, the
agents' heartbeats, the step events they report, the run and step transitions those make, cancels,
and the announcements of every change."""

"""The wire between the daemon and its agents: names and messages both sides agree on.

Agents need NATS only. Everything they exchange with the daemon is named here, so that neither side
hard-codes the other's subjects.
"""

from __future__ import annotations

SOURCES_BUCKET = "sluice-sources"
"""JetStream object store that holds version source snapshots (uncompressed tar), named by digest."""

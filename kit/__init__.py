"""The shared kit: what the daemon, the trigger sources and the agent all use, and none of them owns.

- ``nats``: connecting to NATS (servers, credentials, TLS), the claims of a ``.creds`` file, ``BusError``.
- ``subjects``: subject roots and names on NATS, the step events' stream and the snapshot bucket.
- ``streams``: every JetStream stream, consumer and object store configuration, written once.
- ``backoff``: the one bounded exponential backoff.
- ``supervise``: long-lived loops that are restarted, never lost; ``tasks``: owned sets of short tasks.
- ``offer``: offering a value to a sink until it commits.
- ``logsetup``, ``redaction``, ``units``: log set-up, secrets kept out of logs, sizes in bytes.

``kit`` imports none of ``daemon``, ``triggers`` or ``runners``; they all import it.
"""

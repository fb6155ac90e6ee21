"""The ``nats`` trigger source: NATS messages on a subject become events, through core NATS or JetStream.

Without ``stream`` a trigger is a core subscription: what arrives while the trigger is not
subscribed (paused, daemon down) is gone, and core NATS never redelivers. With ``stream`` it is a
durable pull consumer (``sluice-trigger-<name>``) on the user's own stream, which Sluice never
creates: a message is acknowledged only after the sink has committed its event, so a crash, a
pause or a failing sink leaves it on the stream to be delivered again, and the dedupe key
(``Nats-Msg-Id``, else ``<stream>:<stream sequence>``) turns the repeat into a ``duplicate``.

JetStream messages are pulled with a window of ``max_in_flight`` sink calls: one pull request at a
time asks for what the window has free, with a long expiry and idle heartbeats, so a message is
handed to the sink as soon as it is stored (no polling), and a busy sink still has up to
``max_in_flight`` commits running at once.

``events`` (pure: event fields, matching, dedupe keys), ``runner`` (one trigger's supervised session
and its window of sink calls), ``core`` and ``stream`` (the two kinds of trigger), ``pull`` (a
JetStream session's pull requests) and ``source`` (the ``Source`` that ties them together).
"""

from triggers.nats.source import NatsSource

__all__ = ["NatsSource"]

"""The ``files`` trigger source: settled files in a datastore directory become events.

``matching`` (glob patterns), ``settle`` (pure settle and batch rules), ``watch`` (watchdog and the
bridge to the event loop), ``accounts`` (what a trigger has accounted for: its saved state),
``delivery`` (events to the sink), ``trigger`` (one trigger's loops) and ``source`` (the ``Source``
that ties them together)."""

from triggers.files.source import FilesSource

__all__ = ["FilesSource"]

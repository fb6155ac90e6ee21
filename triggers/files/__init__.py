"""The ``files`` trigger source: settled files in a datastore directory become events.

``matching`` (glob patterns), ``settle`` (pure settle and batch rules), ``watch`` (watchdog and the
bridge to the event loop) and ``source`` (the ``Source`` that ties them together)."""

from triggers.files.source import FilesSource

__all__ = ["FilesSource"]

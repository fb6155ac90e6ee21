"""The ``files`` trigger source: settled files in a datastore directory, or settled objects in a
bucket, become events.

``matching`` (glob patterns), ``settle`` (pure settle and batch rules), ``accounts`` (what a trigger
has accounted for: its saved state), ``delivery`` (events to the sink), ``settling`` (what every
files trigger runs: settling, delivery, saving), ``watch`` and ``trigger`` (a directory: watchdog
and its loops), ``bucket`` and ``notifications`` (a bucket: listings, HEADs, S3 event notifications)
and ``source`` (the ``Source`` that ties them together)."""

from triggers.files.source import FilesSource

__all__ = ["FilesSource"]

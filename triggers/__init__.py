"""Event sources: each kind of trigger turns what it sees into events for the daemon."""

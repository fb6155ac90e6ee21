"""What asks for runs: trigger events from the sources (committed exactly once), manual runs (REST,
CLI) and ``sluice.submit`` requests, each handed to the one creation path (``daemon.planning``)."""

"""Trust on the bus: Sluice's NATS operator, accounts and users (JWT credentials with per-role
subject permissions), so that the NATS server itself refuses what a client may not do."""

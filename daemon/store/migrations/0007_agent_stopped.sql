-- An agent that stops cleanly says so: it is `stopped` at once, not `lost` after its heartbeat timeout.
ALTER TABLE agents DROP CONSTRAINT agents_status_check;
ALTER TABLE agents ADD CONSTRAINT agents_status_check CHECK (status IN ('ready', 'draining', 'lost', 'stopped'));

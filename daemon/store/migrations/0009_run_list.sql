-- The web UI's run list filters by trigger, newest first.
CREATE INDEX runs_trigger_created_at_idx ON runs (trigger, created_at DESC, id DESC) WHERE trigger IS NOT NULL;

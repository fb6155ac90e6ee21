-- Backfills: a trigger's history replayed over a time range, with its progress. The events a
-- backfill makes carry its id, so its runs are counted (active ones against its limit) and its
-- outcomes tallied from the events and runs themselves; only what cannot be counted from them is
-- kept here: the position reached and how many events were offered (the duplicates are those
-- offered that are not its own: their dedupe key had an event already).
CREATE TABLE backfills (
    id          bigserial PRIMARY KEY,
    trigger     text NOT NULL REFERENCES triggers (name) ON DELETE CASCADE,
    version     int CHECK (version > 0),
    range_from  timestamptz NOT NULL,
    range_to    timestamptz NOT NULL CHECK (range_to > range_from),
    max_active  int NOT NULL CHECK (max_active > 0),
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    -- cron: the last fire offered (ISO 8601 UTC); files: the last file offered (mtime_ns:path) or
    -- batch window; NULL before the first.
    position    text,
    total       int NOT NULL CHECK (total >= 0),
    offered     int NOT NULL DEFAULT 0 CHECK (offered >= 0),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX backfills_running_idx ON backfills (id) WHERE status = 'running';
CREATE INDEX backfills_trigger_idx ON backfills (trigger, id DESC);

ALTER TABLE events ADD COLUMN backfill_id bigint REFERENCES backfills (id) ON DELETE SET NULL;
CREATE INDEX events_backfill_id_idx ON events (backfill_id) WHERE backfill_id IS NOT NULL;

-- The whole first schema of Sluice. Every timestamp is timestamptz; every enum is a CHECK.

CREATE TABLE pipelines (
    name            text PRIMARY KEY,
    -- Never NULL after a commit: the first publish inserts the row already pointing at version 1.
    default_version integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE versions (
    pipeline      text NOT NULL REFERENCES pipelines (name),
    version       integer NOT NULL CHECK (version > 0),
    digest        text NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    source_digest text CHECK (source_digest ~ '^sha256:[0-9a-f]{64}$'),
    spec          jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deprecated', 'disabled')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, version),
    UNIQUE (pipeline, digest)
);

-- Deferred so that a pipeline row and its first version can be inserted in either order.
ALTER TABLE pipelines
    ADD CONSTRAINT pipelines_default_version_fkey FOREIGN KEY (name, default_version)
        REFERENCES versions (pipeline, version) DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE datastores (
    name       text PRIMARY KEY,
    type       text NOT NULL,
    spec       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE triggers (
    name          text PRIMARY KEY,
    pipeline      text NOT NULL,
    version       integer,
    source        text NOT NULL CHECK (source IN ('cron', 'files', 'nats', 'run')),
    spec          jsonb NOT NULL,
    paused        boolean NOT NULL DEFAULT false,
    -- The source's own progress (last cron fire, file watermarks …), kept across restarts.
    state         jsonb NOT NULL DEFAULT '{}',
    last_event_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT triggers_pipeline_fkey FOREIGN KEY (pipeline) REFERENCES pipelines (name),
    CONSTRAINT triggers_version_fkey FOREIGN KEY (pipeline, version) REFERENCES versions (pipeline, version)
);
CREATE INDEX triggers_pipeline_idx ON triggers (pipeline);

CREATE TABLE agents (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    labels         jsonb NOT NULL DEFAULT '{}',
    executors      jsonb NOT NULL DEFAULT '[]',
    capacity       jsonb NOT NULL DEFAULT '{}',
    status         text NOT NULL DEFAULT 'ready' CHECK (status IN ('ready', 'draining', 'lost')),
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    -- A trigger's history goes with it; runs keep the trigger's name (runs.trigger has no FK).
    trigger     text NOT NULL REFERENCES triggers (name) ON DELETE CASCADE,
    dedupe_key  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    fields      jsonb NOT NULL DEFAULT '{}',
    outcome     text NOT NULL CHECK (outcome IN ('run', 'duplicate', 'rejected', 'skipped')),
    run_id      uuid,
    reason      text,
    -- The exactly-once guarantee: a redelivered or replayed event collides here.
    CONSTRAINT events_trigger_dedupe_key_key UNIQUE (trigger, dedupe_key)
);
CREATE INDEX events_trigger_id_idx ON events (trigger, id DESC);

CREATE TABLE runs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    pipeline        text NOT NULL,
    version         integer NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params          jsonb NOT NULL DEFAULT '{}',
    reuse           boolean NOT NULL DEFAULT true,
    trigger         text,
    event_id        bigint REFERENCES events (id) ON DELETE SET NULL,
    idempotency_key text,
    -- How the version was chosen: 'pinned' (trigger pin), 'default' (the default then), 'manual' (asked for).
    resolution      text NOT NULL DEFAULT 'default',
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    FOREIGN KEY (pipeline, version) REFERENCES versions (pipeline, version)
);
CREATE UNIQUE INDEX runs_pipeline_idempotency_key_idx ON runs (pipeline, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX runs_event_id_idx ON runs (event_id) WHERE event_id IS NOT NULL;
CREATE INDEX runs_created_at_idx ON runs (created_at DESC, id DESC);
CREATE INDEX runs_pipeline_created_at_idx ON runs (pipeline, created_at DESC, id DESC);
CREATE INDEX runs_active_idx ON runs (pipeline, created_at) WHERE status IN ('queued', 'running');

-- Deferred: the event row and its run are written in one transaction, in either order.
ALTER TABLE events
    ADD CONSTRAINT events_run_id_fkey FOREIGN KEY (run_id) REFERENCES runs (id)
        ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED;
CREATE INDEX events_run_id_idx ON events (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE step_runs (
    id            bigserial PRIMARY KEY,
    run_id        uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name          text NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'ready', 'dispatched', 'running', 'succeeded', 'failed',
                                    'reused', 'skipped', 'cancelled')),
    fingerprint   text,
    reused_from   bigint REFERENCES step_runs (id) ON DELETE SET NULL,
    outputs       jsonb NOT NULL DEFAULT '{}',
    metrics       jsonb NOT NULL DEFAULT '[]',
    -- Why the step was or was not reused, for `runs show`.
    explanation   jsonb,
    attempts_made integer NOT NULL DEFAULT 0 CHECK (attempts_made >= 0),
    ready_at      timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    UNIQUE (run_id, name)
);
CREATE INDEX step_runs_ready_idx ON step_runs (ready_at, id) WHERE status = 'ready';
CREATE INDEX step_runs_fingerprint_idx ON step_runs (fingerprint, finished_at DESC) WHERE status = 'succeeded';
CREATE INDEX step_runs_reused_from_idx ON step_runs (reused_from) WHERE reused_from IS NOT NULL;

CREATE TABLE attempts (
    id            bigserial PRIMARY KEY,
    step_run_id   bigint NOT NULL REFERENCES step_runs (id) ON DELETE CASCADE,
    number        integer NOT NULL CHECK (number > 0),
    agent_id      text REFERENCES agents (id) ON DELETE SET NULL,
    status        text NOT NULL DEFAULT 'dispatched'
                  CHECK (status IN ('dispatched', 'running', 'succeeded', 'failed', 'lost', 'cancelled')),
    exit_code     integer,
    error         text,
    dispatched_at timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    UNIQUE (step_run_id, number)
);
CREATE INDEX attempts_active_agent_idx ON attempts (agent_id) WHERE status IN ('dispatched', 'running');

-- Dispatch: runs held back by concurrency limits, why a ready step waits, and what each attempt
-- reserved on its agent (so that the daemon rebuilds its capacity accounting after a restart).

-- A queued run that waits for a slot under its pipeline's concurrency.max_active_runs: its steps stay
-- pending until the run is admitted.
ALTER TABLE runs ADD COLUMN held boolean NOT NULL DEFAULT false;
CREATE INDEX runs_held_idx ON runs (pipeline, created_at, id) WHERE held;
CREATE INDEX runs_status_created_at_idx ON runs (status, created_at DESC, id DESC);

-- Why a ready step is not placed yet ("no agent has 2 free GPUs …"); NULL once placed.
ALTER TABLE step_runs ADD COLUMN waiting_reason text;

-- What the attempt holds on its agent: the step's resources and the GPU indices reserved for it.
ALTER TABLE attempts ADD COLUMN resources jsonb NOT NULL DEFAULT '{}';
ALTER TABLE attempts ADD COLUMN gpus integer[] NOT NULL DEFAULT '{}';

-- The datastore paths an agent announced (name -> local path), for `sluice agents`.
ALTER TABLE agents ADD COLUMN datastores jsonb NOT NULL DEFAULT '{}';

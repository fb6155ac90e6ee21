-- Reuse: the named parts of each step run's fingerprint, so that a miss can say what changed since the
-- previous run of the step ("parameter date, input raw"). `explanation` (0001) holds the decision.
ALTER TABLE step_runs ADD COLUMN components jsonb;

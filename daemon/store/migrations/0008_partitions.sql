-- Fan-out: a step with `foreach` runs as partitions, each a step run of its own named `step[index]`,
-- beside the step's own row (the node its downstream steps wait for, which is never dispatched).
-- `partition_of` names that step; `partition` is the index; `item` is what the partition's templates
-- see as ${item}: the shard index, the list item, or {"files": [...]} (paths relative to the input).
ALTER TABLE step_runs ADD COLUMN partition_of text;
ALTER TABLE step_runs ADD COLUMN partition integer CHECK (partition IS NULL OR partition >= 0);
ALTER TABLE step_runs ADD COLUMN item jsonb;
ALTER TABLE step_runs ADD CONSTRAINT step_runs_partition_named
    CHECK ((partition_of IS NULL) = (partition IS NULL));
-- A step's partitions, for adding up their outcomes and for `max_parallel`.
CREATE INDEX step_runs_partitions_idx ON step_runs (run_id, partition_of) WHERE partition_of IS NOT NULL;
-- Why a step that fans out succeeded all the same: the partitions that failed within its allowed_failures.
ALTER TABLE step_runs ADD COLUMN warning text;

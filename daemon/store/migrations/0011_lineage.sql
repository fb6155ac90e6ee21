-- Lineage: what each step run read, written with the step run (daemon.rules.lineage).
-- `path` is relative to the datastore's root, in byte order (collation "C"), so that "who read under
-- P" is a range scan of the index: path = P, or P/ <= path < P0 (at a path boundary), or one of P's
-- directories. `fingerprint` is what the step's fingerprint took of the input; `files` the files a
-- partition over files read under `path` (NULL: all of it); `from_*` the output an input came from.
CREATE TABLE step_inputs (
    step_run_id bigint NOT NULL REFERENCES step_runs (id) ON DELETE CASCADE,
    name        text NOT NULL,
    datastore   text NOT NULL,
    path        text COLLATE "C" NOT NULL,
    fingerprint text,
    files       jsonb,
    from_run    uuid,
    from_step   text,
    from_output text,
    PRIMARY KEY (step_run_id, name)
);
CREATE INDEX step_inputs_path_idx ON step_inputs (datastore, path);

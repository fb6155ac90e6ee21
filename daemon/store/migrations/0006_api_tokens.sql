-- API tokens with a scope (read, run, publish, admin): only their SHA-256 is kept, so the database
-- never holds a usable token. A revoked token keeps its row (and its name) until it is made again.
CREATE TABLE api_tokens (
    name       text PRIMARY KEY,
    scope      text NOT NULL CHECK (scope IN ('read', 'run', 'publish', 'admin')),
    digest     text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

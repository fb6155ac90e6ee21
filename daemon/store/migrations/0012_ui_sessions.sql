-- Web UI logins: the cookie holds a random session id, never the token. A session stands for the
-- token it was opened with (revoking the token ends it) until it expires or the person logs out.
CREATE TABLE ui_sessions (
    digest       text PRIMARY KEY,        -- SHA-256 of the session id
    token_digest text NOT NULL,           -- SHA-256 of the token it was opened with
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX ui_sessions_expires_at_idx ON ui_sessions (expires_at);

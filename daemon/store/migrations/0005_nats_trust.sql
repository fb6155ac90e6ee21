-- Sluice's NATS trust (decentralized JWT authentication): the operator, the system account and
-- Sluice's own account with the key that signs its users, as nkey seeds. PostgreSQL is the one
-- place every daemon reads them from; whoever can read this table can mint NATS credentials.
CREATE TABLE nats_trust (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    operator_seed     text NOT NULL,
    system_seed       text NOT NULL,
    account_seed      text NOT NULL,
    signing_seed      text NOT NULL,
    -- Sluice's account as the servers must know it (with its revocations); issued_at only grows,
    -- since a NATS server keeps the newest account JWT it was given.
    account_jwt       text NOT NULL,
    account_issued_at bigint NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- Credentials minted for agents, services and admins: one row per user key. A revoked key is listed
-- in the account JWT's revocations, so servers refuse it and drop its connections.
CREATE TABLE nats_credentials (
    public_key text PRIMARY KEY,
    name       text NOT NULL,
    role       text NOT NULL CHECK (role IN ('agent', 'service', 'admin')),
    -- A service's grant: {"submit": [...] | null, "follow": [...] | null, "publish": [...]}.
    grants     jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX nats_credentials_name ON nats_credentials (name);

-- The token service (DESIGN.md §8a): OAuth 2.0 client-credentials clients and the RS256 keys
-- their tokens are signed with. Every process that verifies tokens reads the public half of the
-- accepted keys and the revoked clients from here; only the query service signs.

-- A client: its secret is stored only as an argon2id PHC string (shown once, when created or
-- rotated). Revoked clients are kept (their id stays taken, for audit); the verifiers refuse
-- their tokens from the next key refresh on.
CREATE TABLE token_clients (
    client_id         text PRIMARY KEY,
    tenant_id         text NOT NULL REFERENCES tenants (tenant_id),
    scopes            text[] NOT NULL,
    description       text,
    secret_hash       text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    secret_rotated_at timestamptz NOT NULL DEFAULT now(),
    revoked_at        timestamptz
);

CREATE INDEX token_clients_tenant ON token_clients (tenant_id, client_id);

-- A signing key. The current key is the newest one without accept_until; a rotation sets the
-- previous key's accept_until to the end of the longest lifetime of a token it may have signed,
-- so those tokens keep verifying until they expire. kid is the key's RFC 7638 thumbprint.
CREATE TABLE token_signing_keys (
    kid             text PRIMARY KEY,
    private_key_pem text NOT NULL,
    public_key_pem  text NOT NULL,
    -- The JWK members (base64url), for /.well-known/jwks.json.
    jwk_n           text NOT NULL,
    jwk_e           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    accept_until    timestamptz
);

-- SMART Backend Services (see src/auth): the registered clients, the client-assertion ids
-- already used (kept until the assertion expires, so a replay is refused by every replica),
-- and the gateway's own token-signing keys. The other database's migration of the same
-- number is identical.

CREATE TABLE auth_client (
    id       TEXT   NOT NULL PRIMARY KEY,
    site     TEXT   NOT NULL,
    role     TEXT   NOT NULL,
    scope    TEXT   NOT NULL,
    jwks     TEXT,
    jwks_url TEXT,
    created  TEXT   NOT NULL,
    revoked  TEXT
);

CREATE TABLE auth_jti (
    client_id TEXT   NOT NULL,
    jti       TEXT   NOT NULL,
    expires   BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX auth_jti_expires ON auth_jti (expires);

CREATE TABLE auth_gateway_key (
    kid         TEXT   NOT NULL PRIMARY KEY,
    alg         TEXT   NOT NULL,
    private_pem TEXT   NOT NULL,
    public_jwk  TEXT   NOT NULL,
    created     BIGINT NOT NULL,
    retired     BIGINT
);

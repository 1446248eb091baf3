-- Resource versions (every create, update and delete is a row here), the current version of
-- each resource, the identifiers of current resources (for conditional interactions), and the
-- submission ledger. The PostgreSQL migration of the same number creates the same tables.

CREATE TABLE resource_version (
    seq          BIGSERIAL PRIMARY KEY,
    res_type     TEXT    NOT NULL,
    res_id       TEXT    NOT NULL,
    version_id   BIGINT  NOT NULL,
    last_updated TEXT    NOT NULL,
    deleted      BOOLEAN NOT NULL,
    content      TEXT,
    issues       TEXT,
    UNIQUE (res_type, res_id, version_id)
);
CREATE INDEX resource_version_type_seq ON resource_version (res_type, seq);

CREATE TABLE resource (
    res_type     TEXT    NOT NULL,
    res_id       TEXT    NOT NULL,
    version_id   BIGINT  NOT NULL,
    last_updated TEXT    NOT NULL,
    deleted      BOOLEAN NOT NULL,
    PRIMARY KEY (res_type, res_id)
);

CREATE TABLE resource_identifier (
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    system   TEXT NOT NULL,
    value    TEXT NOT NULL
);
CREATE INDEX resource_identifier_lookup ON resource_identifier (res_type, value, system);
CREATE INDEX resource_identifier_owner ON resource_identifier (res_type, res_id);

CREATE TABLE submission (
    id                BIGSERIAL PRIMARY KEY,
    received          TEXT   NOT NULL,
    request_id        TEXT   NOT NULL,
    client            TEXT   NOT NULL,
    site              TEXT   NOT NULL,
    method            TEXT   NOT NULL,
    url               TEXT   NOT NULL,
    content_type      TEXT,
    payload           BYTEA  NOT NULL,
    payload_size      BIGINT NOT NULL,
    outcome           TEXT   NOT NULL,
    status            BIGINT NOT NULL,
    operation_outcome TEXT,
    versions          TEXT   NOT NULL
);
CREATE INDEX submission_site_received ON submission (site, received);
CREATE INDEX submission_received ON submission (received);

-- Bulk Data export jobs (src/export/): one row per kick-off, claimed by whichever replica
-- takes it (a lease renewed while it runs, so another replica resumes a job whose owner
-- died), and one row per output file with the keyset position reached and the bytes and
-- resources written up to it, so a resumed job continues where the last checkpoint left it.
-- The PostgreSQL migration of the same number creates the same tables.

CREATE TABLE export_job (
    id               TEXT   PRIMARY KEY,
    client           TEXT   NOT NULL,
    site             TEXT   NOT NULL,
    role             TEXT   NOT NULL,
    scope            TEXT   NOT NULL,
    request          TEXT   NOT NULL,
    params           TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    transaction_time TEXT   NOT NULL,
    created          TEXT   NOT NULL,
    claimed_by       TEXT,
    lease_until      TEXT,
    finished         TEXT,
    error            TEXT
);
CREATE INDEX export_job_status ON export_job (status, created);

CREATE TABLE export_output (
    job_id   TEXT    NOT NULL,
    res_type TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    file     TEXT    NOT NULL,
    position TEXT    NOT NULL,
    bytes    BIGINT  NOT NULL,
    count    BIGINT  NOT NULL,
    done     BOOLEAN NOT NULL,
    PRIMARY KEY (job_id, kind, res_type)
);

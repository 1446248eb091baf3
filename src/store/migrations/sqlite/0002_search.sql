-- Search parameter index rows of current resources (see src/search): one table per
-- parameter type; the rows of a resource are replaced on every write and removed on delete.
-- The PostgreSQL migration of the same number is identical.

CREATE TABLE search_token (
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    system   TEXT NOT NULL,
    code     TEXT NOT NULL
);
CREATE INDEX search_token_lookup ON search_token (res_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (res_type, res_id);

CREATE TABLE search_string (
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    value    TEXT NOT NULL
);
CREATE INDEX search_string_lookup ON search_string (res_type, param, value);
CREATE INDEX search_string_owner ON search_string (res_type, res_id);

CREATE TABLE search_date (
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    low      TEXT NOT NULL,
    high     TEXT NOT NULL
);
CREATE INDEX search_date_low ON search_date (res_type, param, low);
CREATE INDEX search_date_high ON search_date (res_type, param, high);
CREATE INDEX search_date_owner ON search_date (res_type, res_id);

CREATE TABLE search_reference (
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    target   TEXT NOT NULL
);
CREATE INDEX search_reference_lookup ON search_reference (res_type, param, target);
CREATE INDEX search_reference_target ON search_reference (target);
CREATE INDEX search_reference_owner ON search_reference (res_type, res_id);

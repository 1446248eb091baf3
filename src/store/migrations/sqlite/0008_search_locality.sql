-- Fewer pages per search. A search filters on index tables and checks each candidate's
-- current row in `resource`, one random probe per candidate:
-- - `resource` becomes a WITHOUT ROWID table, so the probe by (res_type, res_id) lands on
--   the row itself instead of on an index entry and then on the row;
-- - the reference lookup index carries `res_id`, so `x.res_id IN (...)` lists come from
--   the index alone.
-- The PostgreSQL migration of the same number makes the same index change (its heap has
-- no rowid to remove).

CREATE TABLE resource_new (
    res_type     TEXT    NOT NULL,
    res_id       TEXT    NOT NULL,
    version_id   BIGINT  NOT NULL,
    last_updated TEXT    NOT NULL,
    deleted      BOOLEAN NOT NULL,
    site         TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (res_type, res_id)
) WITHOUT ROWID;
INSERT INTO resource_new (res_type, res_id, version_id, last_updated, deleted, site)
    SELECT res_type, res_id, version_id, last_updated, deleted, site FROM resource;
DROP TABLE resource;
ALTER TABLE resource_new RENAME TO resource;
CREATE INDEX resource_site ON resource (site, res_type);

DROP INDEX search_reference_lookup;
CREATE INDEX search_reference_lookup ON search_reference (res_type, param, target, res_id);

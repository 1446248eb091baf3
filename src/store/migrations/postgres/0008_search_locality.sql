-- Fewer pages per search: the reference lookup index carries `res_id`, so
-- `x.res_id IN (...)` lists come from the index alone. The SQLite migration of the same
-- number also turns `resource` into a WITHOUT ROWID table (PostgreSQL has no rowid).

DROP INDEX search_reference_lookup;
CREATE INDEX search_reference_lookup ON search_reference (res_type, param, target, res_id);

-- Owner indexes lead with `res_id`. Every use of them is an equality on both `res_type`
-- and `res_id` (the probe of a search clause for one candidate, the rows of one resource
-- replaced on update, a sort key's group), so the order of the two does not change which
-- lookups they serve; with `res_id` first a probe's key comparisons are decided on the
-- first column instead of after `res_type`, equal for every entry of a type (a search's
-- per-candidate probes: about 30% less time on SQLite at 100,000 resources), and new rows
-- of server-assigned (time-ordered) ids go to the end of one index instead of to one
-- place per type. Token text, reference identifier and uri rows get their parameter and
-- value too, so their probes read the index alone, like the others since 0005.

DROP INDEX search_token_owner;
CREATE INDEX search_token_owner ON search_token (res_id, res_type, param, code);
DROP INDEX search_string_owner;
CREATE INDEX search_string_owner ON search_string (res_id, res_type, param, value);
DROP INDEX search_date_owner;
CREATE INDEX search_date_owner ON search_date (res_id, res_type, param, low, high);
DROP INDEX search_reference_owner;
CREATE INDEX search_reference_owner ON search_reference (res_id, res_type, param, target);
DROP INDEX search_token_text_owner;
CREATE INDEX search_token_text_owner ON search_token_text (res_id, res_type, param, text);
DROP INDEX search_reference_identifier_owner;
CREATE INDEX search_reference_identifier_owner
    ON search_reference_identifier (res_id, res_type, param, value, system);
DROP INDEX search_quantity_owner;
CREATE INDEX search_quantity_owner ON search_quantity (res_id, res_type, param);
DROP INDEX search_uri_owner;
CREATE INDEX search_uri_owner ON search_uri (res_id, res_type, param, uri);
DROP INDEX resource_identifier_owner;
CREATE INDEX resource_identifier_owner ON resource_identifier (res_id, res_type);

-- More of search (see src/search): the quantity/number and uri index tables, the display
-- text of tokens (CodeableConcept.text, Coding.display) for `:text`, and the identifier of
-- references for `:identifier`. The SQLite and PostgreSQL migrations of this number create
-- the same tables; the indexes serving `LIKE 'prefix%'` differ: NOCASE collation on SQLite
-- (whose LIKE ignores ASCII case; the values are lower-cased), pattern operators on
-- PostgreSQL.
-- Resources stored before this migration have no rows in the new tables until rewritten.

-- A display text is a row of its own: system and code empty, `text` lower-cased.
ALTER TABLE search_token ADD COLUMN text TEXT NOT NULL DEFAULT '';
CREATE INDEX search_token_text ON search_token (res_type, param, text text_pattern_ops);

-- String search is by prefix: the pattern-operator index serves it and equality.
DROP INDEX search_string_lookup;
CREATE INDEX search_string_lookup ON search_string (res_type, param, value text_pattern_ops);

-- A Reference.identifier is a row of its own: target empty, the identifier's system|value.
ALTER TABLE search_reference ADD COLUMN id_system TEXT NOT NULL DEFAULT '';
ALTER TABLE search_reference ADD COLUMN id_value TEXT NOT NULL DEFAULT '';
CREATE INDEX search_reference_identifier ON search_reference (res_type, param, id_value, id_system);

-- Quantities (and numbers: system, code and unit empty) as the range they cover (a point, or
-- a Range's low..high), as written and, where the unit converts, in UCUM base units.
CREATE TABLE search_quantity (
    res_type   TEXT NOT NULL,
    res_id     TEXT NOT NULL,
    param      TEXT NOT NULL,
    system     TEXT NOT NULL,
    code       TEXT NOT NULL,
    unit       TEXT NOT NULL,
    low        DOUBLE PRECISION NOT NULL,
    high       DOUBLE PRECISION NOT NULL,
    canon_code TEXT NOT NULL,
    canon_low  DOUBLE PRECISION NOT NULL,
    canon_high DOUBLE PRECISION NOT NULL
);
CREATE INDEX search_quantity_value ON search_quantity (res_type, param, low);
CREATE INDEX search_quantity_code ON search_quantity (res_type, param, code, low);
CREATE INDEX search_quantity_canon ON search_quantity (res_type, param, canon_code, canon_low);
CREATE INDEX search_quantity_owner ON search_quantity (res_type, res_id);

CREATE TABLE search_uri (
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    uri      TEXT NOT NULL
);
CREATE INDEX search_uri_lookup ON search_uri (res_type, param, uri text_pattern_ops);
CREATE INDEX search_uri_owner ON search_uri (res_type, res_id);

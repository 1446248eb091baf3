-- More of search (see src/search): index tables for the display texts of tokens (`:text`),
-- the identifiers of references (`:identifier`), quantities and numbers, and uris. The
-- tables of migration 0002 keep their meaning (one row per value, no marker rows), so that
-- sorting and includes over them are unaffected. The SQLite and PostgreSQL migrations of
-- this number create the same tables; the indexes serving `LIKE 'prefix%'` differ: NOCASE
-- collation on SQLite (whose LIKE ignores ASCII case; the values are lower-cased), pattern
-- operators on PostgreSQL.
-- Resources stored before this migration have no rows in the new tables until rewritten.

-- String search is by prefix: the pattern-operator index serves it and equality.
DROP INDEX search_string_lookup;
CREATE INDEX search_string_lookup ON search_string (res_type, param, value text_pattern_ops);

-- The display texts of token values (Coding.display, CodeableConcept.text,
-- Identifier.type.text), lower-cased, for `:text`.
CREATE TABLE search_token_text (
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    text     TEXT NOT NULL
);
CREATE INDEX search_token_text_lookup ON search_token_text (res_type, param, text text_pattern_ops);
CREATE INDEX search_token_text_owner ON search_token_text (res_type, res_id);

-- The identifiers of references (Reference.identifier), for `:identifier`.
CREATE TABLE search_reference_identifier (
    res_type TEXT NOT NULL,
    res_id   TEXT NOT NULL,
    param    TEXT NOT NULL,
    system   TEXT NOT NULL,
    value    TEXT NOT NULL
);
CREATE INDEX search_reference_identifier_lookup
    ON search_reference_identifier (res_type, param, value, system);
CREATE INDEX search_reference_identifier_owner ON search_reference_identifier (res_type, res_id);

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

-- The input records as they are, column for column: the ingest pipelines
-- (pipelines/ingest-*.toml) declare every field of the bus record as text (or integer), so the
-- Kafka sink writes each record back byte for byte as the source built it.
-- Input: records (the source's records).
SELECT * FROM records

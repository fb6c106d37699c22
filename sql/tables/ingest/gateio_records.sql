-- The candle record's fields as `coinstream ingest gateio` (pipelines/ingest-gateio.toml)
-- receives them, in its order: text stays text, so decimals and times are written back to Kafka
-- exactly (byte for byte). The input table of sql/passthrough.sql.
CREATE TABLE records (
    currency_pair VARCHAR NOT NULL,
    "interval"    VARCHAR NOT NULL,
    window_start  VARCHAR NOT NULL,
    open          VARCHAR NOT NULL,
    high          VARCHAR NOT NULL,
    low           VARCHAR NOT NULL,
    close         VARCHAR NOT NULL,
    volume_base   VARCHAR,
    volume_quote  VARCHAR NOT NULL,
    ingest_time   VARCHAR NOT NULL
);

-- The trade record's fields as `coinstream ingest coinbase` (pipelines/ingest-coinbase.toml)
-- receives them, in its order: text stays text, so decimals and times are written back to Kafka
-- exactly (byte for byte). The input table of sql/passthrough.sql.
CREATE TABLE records (
    symbol      VARCHAR NOT NULL,
    coin_name   VARCHAR,
    trade_id    BIGINT NOT NULL,
    sequence    BIGINT,
    trade_time  VARCHAR NOT NULL,
    price       VARCHAR NOT NULL,
    size        VARCHAR NOT NULL,
    side        VARCHAR NOT NULL,
    ingest_time VARCHAR NOT NULL
);

-- Records of the seeds' old Python producer (pipelines/kafka-cassandra-legacy.toml): event_time
-- was the producer's own wall clock, side Coinbase's maker side as received. The input table of
-- sql/profit_legacy.sql.
CREATE TABLE legacy_trades (
    event      VARCHAR,
    event_time TIMESTAMP(6) WITH TIME ZONE NOT NULL,
    coin_name  VARCHAR,
    symbol     VARCHAR NOT NULL,
    trade_id   BIGINT NOT NULL,
    price      DECIMAL(28,10) NOT NULL,
    size       DECIMAL(28,10) NOT NULL,
    side       VARCHAR NOT NULL
);

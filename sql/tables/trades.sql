-- The trade record on the bus (connectors::common::trade::TradeRecord): one row per trade, the
-- same whichever venue it came from. Prices and sizes are exact decimals, never floats; times are
-- UTC instants in microseconds. The input table of sql/profit.sql, and the default input table of
-- a config that declares none.
CREATE TABLE trades (
    symbol      VARCHAR NOT NULL,               -- the product, BASE-QUOTE (BTC-USD)
    coin_name   VARCHAR,                        -- from the coin map, if the product is in it
    trade_id    BIGINT NOT NULL,                -- the venue's trade id, increasing per product
    sequence    BIGINT,                         -- the venue's sequence number, where it has one
    trade_time  TIMESTAMP(6) WITH TIME ZONE NOT NULL,
    price       DECIMAL(28,10) NOT NULL,
    size        DECIMAL(28,10) NOT NULL,
    side        VARCHAR NOT NULL,               -- the taker's side: buy or sell
    ingest_time TIMESTAMP(6) WITH TIME ZONE     -- when the connector received it
);

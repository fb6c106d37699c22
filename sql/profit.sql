-- Every trade of a portfolio product with the profit of the holding at that trade's price:
-- profit = (price - buy_price) * the portfolio's size. Exact decimals throughout.
-- Inputs: trades (the bus records), portfolio and coins (reference tables).
SELECT
    t.symbol,
    COALESCE(c.coin_name, p.coin_name) AS coin_name,
    t.trade_id,
    t.trade_time,
    CAST(t.trade_time AS DATE) AS trade_date,
    t.price,
    t.size,
    t.side,
    (t.price - p.buy_price) * p.size AS profit
FROM trades AS t
JOIN portfolio AS p ON p.symbol = t.symbol
LEFT JOIN coins AS c ON c.symbol = t.symbol

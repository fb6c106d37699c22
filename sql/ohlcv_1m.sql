-- 1-minute OHLCV candles per product, built from the trade stream (a stateful streaming
-- aggregation: see pipelines/ohlcv.toml and the README's "Windows and watermarks").
-- Input: trades. One row per product and minute, written once, when the watermark passes the
-- minute's end (append mode). open/close are the prices of the earliest/latest trade by
-- (trade_time, trade_id); volume is the sum of sizes; exact decimals throughout; window_end is
-- exclusive.
SELECT
    symbol,
    w['start'] AS window_start,
    w['end'] AS window_end,
    first_value(price ORDER BY trade_time, trade_id) AS open,
    max(price) AS high,
    min(price) AS low,
    last_value(price ORDER BY trade_time, trade_id) AS close,
    sum(size) AS volume,
    count(*) AS trade_count
FROM (SELECT symbol, trade_id, trade_time, price, size,
             tumble(trade_time, INTERVAL '1 minute') AS w
      FROM trades)
GROUP BY symbol, w

-- Closed Gate.io candles (topic crypto_candles, written by `coinstream ingest gateio`) with the
-- pair split into its currencies and the window's change. Exact decimals throughout.
-- Input: gateio_candles (the candle records; one row per pair, interval and window start).
SELECT
    c.currency_pair,
    c."interval",
    c.window_start,
    split_part(c.currency_pair, '_', 1) AS base_currency,
    split_part(c.currency_pair, '_', 2) AS quote_currency,
    c.open,
    c.high,
    c.low,
    c.close,
    c.close - c.open AS change,
    c.volume_base,
    c.volume_quote,
    c.ingest_time
FROM gateio_candles AS c

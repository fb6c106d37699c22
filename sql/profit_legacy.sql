-- profit.sql for records of the seeds' old Python producer (pipelines/kafka-cassandra-legacy.toml):
-- same output columns, so both write the same Cassandra table.
-- Its `side` is Coinbase's maker side: inverted here to the taker's, as the bus record carries.
SELECT
    t.symbol,
    COALESCE(c.coin_name, t.coin_name, p.coin_name) AS coin_name,
    t.trade_id,
    t.event_time AS trade_time,
    CAST(t.event_time AS DATE) AS trade_date,
    t.price,
    t.size,
    CASE t.side WHEN 'sell' THEN 'buy' WHEN 'buy' THEN 'sell' ELSE t.side END AS side,
    (t.price - p.buy_price) * p.size AS profit
FROM legacy_trades AS t
JOIN portfolio AS p ON p.symbol = t.symbol
LEFT JOIN coins AS c ON c.symbol = t.symbol

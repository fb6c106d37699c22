-- The Gate.io candle record on the bus (connectors::gateio::candles::CandleRecord): one closed
-- window per pair and interval. The input table of sql/candles.sql.
CREATE TABLE gateio_candles (
    currency_pair VARCHAR NOT NULL,
    "interval"    VARCHAR NOT NULL,
    window_start  TIMESTAMP(0) WITH TIME ZONE NOT NULL,
    open          DECIMAL(28,10) NOT NULL,
    high          DECIMAL(28,10) NOT NULL,
    low           DECIMAL(28,10) NOT NULL,
    close         DECIMAL(28,10) NOT NULL,
    volume_base   DECIMAL(38,10),
    volume_quote  DECIMAL(38,10) NOT NULL,
    ingest_time   TIMESTAMP(6) WITH TIME ZONE
);

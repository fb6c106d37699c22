"""Opens a coinstream store the way people do and checks it against `coinstream query`.

Usage: check_store.py parquet|delta STORE EXPECTED_JSON

EXPECTED_JSON (written by tests/readers.rs from `coinstream query`):
  {"rows": 123, "profit_by_symbol": {"BTC-USD": "12.3400000000", ...},
   "rows_by_date": {"2026-11-23": 100, ...}}

Each reader opens STORE with its defaults; the same checks run on what each gives. The partition
columns' types, as each reader gives them (PARQUET_READERS and DELTA_READERS below):
  Parquet folder (Hive partitioning, types inferred from the folder names):
    pandas.read_parquet            symbol category, trade_date category (of strings)
    pyarrow.dataset(hive)          symbol string, trade_date string
    duckdb read_parquet(hive)      symbol VARCHAR, trade_date DATE
  Delta table (types from the table's schema in its log):
    deltalake to_pandas            symbol str, trade_date object (of datetime.date)
    deltalake to_pyarrow_table     symbol string, trade_date date32
Profit is an exact decimal in each.
"""

import json
import sys
from decimal import Decimal, getcontext

import deltalake
import duckdb
import pandas
import pyarrow
import pyarrow.dataset

# Sums of decimal(38, s) values, exact: the default 28 digits would round them.
getcontext().prec = 80


# Each reader: STORE -> (the type of each column as the reader names it, the rows as
# (symbol, trade_date, profit) tuples of Python values).
COLUMNS = ["symbol", "trade_date", "profit"]


def read_pandas(store):
    frame = pandas.read_parquet(store)
    types = {c: str(frame[c].dtype) for c in frame.columns}
    return types, list(frame[COLUMNS].itertuples(index=False, name=None))


def arrow_rows(table):
    types = {f.name: str(f.type) for f in table.schema}
    return types, list(zip(*(table.column(c).to_pylist() for c in COLUMNS)))


def read_pyarrow(store):
    return arrow_rows(pyarrow.dataset.dataset(store, partitioning="hive").to_table())


def read_duckdb(store):
    glob = f"{store}/**/*.parquet"
    sql = "SELECT * FROM read_parquet(?, hive_partitioning = true)"
    return arrow_rows(duckdb.sql(sql, params=[glob]).to_arrow_table())


def read_delta_pandas(store):
    frame = deltalake.DeltaTable(store).to_pandas()
    types = {c: str(frame[c].dtype) for c in frame.columns}
    return types, list(frame[COLUMNS].itertuples(index=False, name=None))


def read_delta_pyarrow(store):
    return arrow_rows(pyarrow.table(deltalake.DeltaTable(store).to_pyarrow_table()))


# name -> (read, the type it gives each partition column)
PARQUET_READERS = {
    "pandas": (read_pandas, {"symbol": "category", "trade_date": "category"}),
    "pyarrow.dataset": (read_pyarrow, {"symbol": "string", "trade_date": "string"}),
    "duckdb": (read_duckdb, {"symbol": "string", "trade_date": "date32[day]"}),
}
DELTA_READERS = {
    "deltalake.to_pandas": (read_delta_pandas, {"symbol": "str", "trade_date": "object"}),
    "deltalake.to_pyarrow_table": (
        read_delta_pyarrow,
        {"symbol": "string", "trade_date": "date32[day]"},
    ),
}


def text(value):
    """A partition value as the query prints it, whatever type the reader gave it."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def check(read, store, partition_types, expected):
    types, rows = read(store)
    problems = []
    if len(rows) != expected["rows"]:
        problems.append(f"{len(rows)} rows, the query counts {expected['rows']}")
    for column, wanted in partition_types.items():
        if types.get(column) != wanted:
            problems.append(f"partition column {column} is {types.get(column)}, expected {wanted}")
    profit = {}
    dates = {}
    for symbol, date, value in rows:
        if not isinstance(value, Decimal):
            problems.append(f"profit is {type(value).__name__}, not an exact decimal")
            break
        profit[str(symbol)] = profit.get(str(symbol), Decimal(0)) + value
        dates[text(date)] = dates.get(text(date), 0) + 1
    want = {s: Decimal(v) for s, v in expected["profit_by_symbol"].items()}
    if profit != want:
        problems.append(f"profit by symbol {profit}, the query says {want}")
    if dates != expected["rows_by_date"]:
        problems.append(f"rows by date {dates}, the query says {expected['rows_by_date']}")
    return problems


def main():
    kind, store, expected_file = sys.argv[1:]
    readers = {"parquet": PARQUET_READERS, "delta": DELTA_READERS}[kind]
    with open(expected_file) as f:
        expected = json.load(f)
    failed = False
    for name, (read, types) in readers.items():
        try:
            problems = check(read, store, types, expected)
        except Exception as e:  # a reader that cannot open the store at all
            problems = [f"cannot read the store: {type(e).__name__}: {e}"]
        for p in problems:
            print(f"{name}: {p}")
        if not problems:
            print(f"{name}: ok")
        failed = failed or bool(problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

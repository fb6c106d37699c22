"""A minimal Cassandra client (CQL native protocol v4) in the Python standard library.

The benchmark uses it to create and drop tables, count rows and read profits and write times,
so that the coinstream part of the bench (and its smoke test) needs no pip install at all. It
speaks just enough of the protocol for that: STARTUP (no authentication), QUERY with paging,
and the result kinds and column types the bench reads (text, bigint, int, decimal, timestamp,
date, boolean, double). Not a general driver.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import socket
import struct

_OP_ERROR, _OP_STARTUP, _OP_READY, _OP_QUERY, _OP_RESULT = 0x00, 0x01, 0x02, 0x07, 0x08
_CONSISTENCY = {"one": 0x0001, "quorum": 0x0004, "all": 0x0005, "local_quorum": 0x0006, "local_one": 0x000A}


class CqlError(Exception):
    """An ERROR frame from the server (code and message)."""

    def __init__(self, code: int, message: str):
        super().__init__(f"CQL error 0x{code:04x}: {message}")
        self.code = code


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def _long_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">i", len(b)) + b


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def short(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def string(self) -> str:
        return self.take(self.short()).decode()

    def bytes(self) -> bytes | None:
        n = self.int()
        return None if n < 0 else self.take(n)

    def option(self):
        kind = self.short()
        if kind == 0x0000:
            return ("custom", self.string())
        if kind in (0x0020, 0x0022):
            return (kind, self.option())
        if kind == 0x0021:
            return (kind, self.option(), self.option())
        if kind in (0x0030, 0x0031):
            raise NotImplementedError("UDT and tuple columns are not supported")
        return kind


def _varint(b: bytes) -> int:
    return int.from_bytes(b, "big", signed=True) if b else 0


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _decode(kind, b: bytes | None):
    if b is None:
        return None
    if kind in (0x0001, 0x000A, 0x000D):  # ascii, text, varchar
        return b.decode()
    if kind in (0x0002, 0x0005):  # bigint, counter
        return struct.unpack(">q", b)[0]
    if kind == 0x0009:
        return struct.unpack(">i", b)[0]
    if kind == 0x0006:  # decimal: scale, then varint unscaled value
        scale = struct.unpack(">i", b[:4])[0]
        return decimal.Decimal(_varint(b[4:])).scaleb(-scale)
    if kind == 0x000E:
        return _varint(b)
    if kind == 0x000B:  # timestamp: ms since the epoch
        return _EPOCH + _dt.timedelta(milliseconds=struct.unpack(">q", b)[0])
    if kind == 0x0011:  # date: days since the epoch, centred on 2^31
        return _dt.date(1970, 1, 1) + _dt.timedelta(days=struct.unpack(">I", b)[0] - 2**31)
    if kind == 0x0004:
        return b != b"\x00"
    if kind == 0x0007:
        return struct.unpack(">d", b)[0]
    return b


class Session:
    """One connection to one node. Queries are sent one at a time (stream id 0)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9042, timeout: float = 60.0):
        self.warnings: list[str] = []
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0")
        op, _ = self._request(_OP_STARTUP, body)
        if op != _OP_READY:
            raise CqlError(-1, f"expected READY, got opcode {op} (authentication is not supported)")

    @classmethod
    def connect(cls, nodes: str = "127.0.0.1:9042", timeout: float = 60.0) -> "Session":
        first = nodes.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        return cls(host or first, int(port or 9042), timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _recv(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            c = self.sock.recv(min(left, 1 << 20))
            if not c:
                raise ConnectionError("Cassandra closed the connection")
            chunks.append(c)
            left -= len(c)
        return b"".join(chunks)

    def _request(self, opcode: int, body: bytes):
        self.sock.sendall(struct.pack(">BBhBi", 0x04, 0, 0, opcode, len(body)) + body)
        _version, flags, _stream, op, length = struct.unpack(">BBhBi", self._recv(9))
        data = self._recv(length)
        # Frame flags put a prefix before the body: tracing id, warnings, custom payload.
        r = _Reader(data)
        if flags & 0x02:
            r.take(16)
        if flags & 0x08:
            self.warnings = [r.string() for _ in range(r.short())]
        if flags & 0x04:
            for _ in range(r.short()):
                r.string(), r.bytes()
        data = data[r.pos :]
        if op == _OP_ERROR:
            r = _Reader(data)
            code = r.int()
            raise CqlError(code, r.string())
        return op, data

    def _page(self, cql: str, consistency: str, page_size: int, paging_state: bytes | None):
        flags = 0x04 | (0x08 if paging_state is not None else 0)
        body = _long_string(cql) + struct.pack(">HB", _CONSISTENCY[consistency], flags)
        body += struct.pack(">i", page_size)
        if paging_state is not None:
            body += struct.pack(">i", len(paging_state)) + paging_state
        op, data = self._request(_OP_QUERY, body)
        if op != _OP_RESULT:
            raise CqlError(-1, f"expected RESULT, got opcode {op}")
        r = _Reader(data)
        kind = r.int()
        if kind != 0x0002:  # Void, Set_keyspace, Schema_change: no rows
            return [], [], None
        flags, ncols = r.int(), r.int()
        state = r.bytes() if flags & 0x0002 else None
        names, kinds = [], []
        if not flags & 0x0004:
            if flags & 0x0001:
                r.string(), r.string()
            for _ in range(ncols):
                if not flags & 0x0001:
                    r.string(), r.string()
                names.append(r.string())
                kinds.append(r.option())
        rows = []
        for _ in range(r.int()):
            rows.append(tuple(_decode(kinds[i], r.bytes()) for i in range(ncols)))
        return names, rows, state

    def execute(self, cql: str, consistency: str = "local_quorum", page_size: int = 5000):
        """Runs one statement; returns every row (all pages) as tuples."""
        return list(self.iterate(cql, consistency, page_size))

    def iterate(self, cql: str, consistency: str = "local_quorum", page_size: int = 5000):
        """Runs one statement and yields its rows page by page."""
        state = None
        while True:
            _names, rows, state = self._page(cql, consistency, page_size, state)
            yield from rows
            if state is None:
                return


def quote_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


if __name__ == "__main__":  # a tiny cqlsh for debugging: python3 bench/cql.py "SELECT ..."
    import sys

    with Session.connect() as s:
        for row in s.iterate(" ".join(sys.argv[1:])):
            print(row)

"""The market store: OHLCV candles, funding rates and open interest in one SQL database.

SQLite (an embedded file) is the default; PostgreSQL is used when ``MARKET_DB_URL`` names it
(``postgresql+psycopg2://user@host/db``). Both go through SQLAlchemy Core with the dialect's
native upsert (``INSERT … ON CONFLICT DO UPDATE``), so loading the same window twice leaves one row
per key and the latest values.

Timestamps are stored as integer milliseconds since the Unix epoch, UTC (column ``ts``): one
unambiguous representation on every backend. Loaders return ``datetime64[ns, UTC]`` columns.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.data.sources import FUNDING_COLUMNS, OHLCV_COLUMNS, OPEN_INTEREST_COLUMNS
from include.errors import ConfigError

logger = logging.getLogger(__name__)

metadata = sa.MetaData()

ohlcv_table = sa.Table(
    "ohlcv",
    metadata,
    sa.Column("exchange", sa.String(32), primary_key=True),
    sa.Column("market_type", sa.String(16), primary_key=True),
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("timeframe", sa.String(8), primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True, comment="bar open time, ms since epoch UTC"),
    *(sa.Column(c, sa.Float) for c in OHLCV_COLUMNS),
)

funding_table = sa.Table(
    "funding_rate",
    metadata,
    sa.Column("exchange", sa.String(32), primary_key=True),
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True, comment="settlement time, ms since epoch UTC"),
    sa.Column("funding_rate", sa.Float, comment="fraction paid per settlement interval"),
)

open_interest_table = sa.Table(
    "open_interest",
    metadata,
    sa.Column("exchange", sa.String(32), primary_key=True),
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True, comment="UTC day start, ms since epoch"),
    sa.Column("open_interest", sa.Float, comment="USD notional, daily close"),
)

_CHUNK_ROWS = 5_000


@dataclass(frozen=True)
class UpsertResult:
    """Outcome of one upsert.

    Attributes:
        rows_written: rows sent to the database (inserted or updated).
        rows_new: keys that did not exist before.
    """

    rows_written: int
    rows_new: int


def _to_ms(ts: pd.Series) -> pd.Series:
    return (ts.dt.tz_convert("UTC") - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)


def _bound_ms(value: datetime) -> int:
    return int(pd.Timestamp(value).tz_convert("UTC").value // 1_000_000)


class MarketStore:
    """Read and write market series in a SQL database.

    Args:
        url: SQLAlchemy database URL. A ``sqlite:///path`` URL creates the parent folder.

    Raises:
        ConfigError: the URL names an unsupported backend (only SQLite and PostgreSQL are).
    """

    def __init__(self, url: str) -> None:
        backend = sa.engine.make_url(url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ConfigError(f"MARKET_DB_URL backend {backend!r} is not supported (sqlite, postgresql)")
        if backend == "sqlite":
            database = sa.engine.make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.backend = backend
        self.engine: Engine = sa.create_engine(url, future=True)
        metadata.create_all(self.engine)

    def __repr__(self) -> str:
        return f"MarketStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    # -- writes -----------------------------------------------------------------------------
    def _upsert(self, table: sa.Table, keys: dict[str, str], frame: pd.DataFrame,
                values: tuple[str, ...]) -> UpsertResult:
        if frame.empty:
            return UpsertResult(0, 0)
        records = pd.DataFrame({"ts": _to_ms(frame["timestamp"])})
        for col in values:
            # NaN travels as NULL so that validation reports it instead of the store hiding it.
            records[col] = [None if (v is None or math.isnan(v)) else float(v) for v in frame[col]]
        for key, value in keys.items():
            records[key] = value
        rows = records.to_dict("records")
        if self.backend == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        pk = [c.name for c in table.primary_key.columns]
        where = sa.and_(*(table.c[k] == v for k, v in keys.items()))
        lo, hi = int(records["ts"].min()), int(records["ts"].max())
        count = sa.select(sa.func.count()).select_from(table).where(
            where, table.c.ts >= lo, table.c.ts <= hi)
        with self.engine.begin() as conn:
            before = conn.execute(count).scalar_one()
            for i in range(0, len(rows), _CHUNK_ROWS):
                stmt = insert(table)
                stmt = stmt.on_conflict_do_update(
                    index_elements=pk, set_={c: stmt.excluded[c] for c in values})
                conn.execute(stmt, rows[i:i + _CHUNK_ROWS])
            after = conn.execute(count).scalar_one()
        return UpsertResult(rows_written=len(rows), rows_new=int(after - before))

    def upsert_ohlcv(self, frame: pd.DataFrame, *, exchange: str, market_type: str, symbol: str,
                     timeframe: str) -> UpsertResult:
        """Insert or update candles, shape ``(n, 6)``: timestamp + OHLCV. Idempotent."""
        keys = {"exchange": exchange, "market_type": market_type, "symbol": symbol,
                "timeframe": timeframe}
        return self._upsert(ohlcv_table, keys, frame, OHLCV_COLUMNS)

    def upsert_funding_rates(self, frame: pd.DataFrame, *, exchange: str, symbol: str) -> UpsertResult:
        """Insert or update funding settlements: timestamp, funding_rate. Idempotent."""
        return self._upsert(funding_table, {"exchange": exchange, "symbol": symbol}, frame,
                            FUNDING_COLUMNS)

    def upsert_open_interest(self, frame: pd.DataFrame, *, exchange: str, symbol: str) -> UpsertResult:
        """Insert or update daily open interest: timestamp, open_interest. Idempotent."""
        return self._upsert(open_interest_table, {"exchange": exchange, "symbol": symbol}, frame,
                            OPEN_INTEREST_COLUMNS)

    # -- reads ------------------------------------------------------------------------------
    def _load(self, table: sa.Table, keys: dict[str, str], values: tuple[str, ...],
              start: datetime, end: datetime) -> pd.DataFrame:
        stmt = (
            sa.select(table.c.ts, *(table.c[c] for c in values))
            .where(*(table.c[k] == v for k, v in keys.items()))
            .where(table.c.ts >= _bound_ms(start), table.c.ts < _bound_ms(end))
            .order_by(table.c.ts)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        frame = pd.DataFrame(rows, columns=["ts", *values])
        out = pd.DataFrame({"timestamp": pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True)})
        for col in values:
            out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        return out

    def load_ohlcv(self, *, exchange: str, market_type: str, symbol: str, timeframe: str,
                   start: datetime, end: datetime) -> pd.DataFrame:
        """Candles with bar open time in ``[start, end)``, sorted; shape ``(n, 6)``."""
        keys = {"exchange": exchange, "market_type": market_type, "symbol": symbol,
                "timeframe": timeframe}
        return self._load(ohlcv_table, keys, OHLCV_COLUMNS, start, end)

    def load_funding_rates(self, *, exchange: str, symbol: str, start: datetime,
                           end: datetime) -> pd.DataFrame:
        """Funding settlements in ``[start, end)``, sorted; shape ``(n, 2)``."""
        return self._load(funding_table, {"exchange": exchange, "symbol": symbol},
                          FUNDING_COLUMNS, start, end)

    def load_open_interest(self, *, exchange: str, symbol: str, start: datetime,
                           end: datetime) -> pd.DataFrame:
        """Daily open interest with day start in ``[start, end)``, sorted; shape ``(n, 2)``."""
        return self._load(open_interest_table, {"exchange": exchange, "symbol": symbol},
                          OPEN_INTEREST_COLUMNS, start, end)

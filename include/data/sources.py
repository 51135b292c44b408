"""Market-data sources: where OHLCV candles, funding rates and open interest come from.

A source returns plain DataFrames with a UTC ``timestamp`` column and the value columns below,
restricted to a half-open window ``[start, end)``. It does not clean or fill anything: checking
the data is the validation stage's job, so a source hands over what it found.

=================  ===========================================  ==================================
series             columns                                      timestamp means
=================  ===========================================  ==================================
OHLCV              open, high, low, close, volume (base asset)  bar open time
funding rate       funding_rate (fraction per settlement)       settlement time
open interest      open_interest (USD notional, daily close)    UTC day start of the daily bar
=================  ===========================================  ==================================

:class:`FileSource` reads the bundled Binance files (``data/binance``) or any directory of files
in the same format; see ``data/binance/SOURCES.md``. The ccxt exchange source
(:class:`include.data.exchange.ExchangeSource`) implements the same :class:`MarketDataSource`
protocol. A source whose ``incremental`` attribute is true is asked only for what the store
lacks (see :mod:`include.data.ingest`); others are re-read over the whole window.
"""

from __future__ import annotations

import gzip
import io
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd

from include.errors import SourceError

logger = logging.getLogger(__name__)

OHLCV_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
FUNDING_COLUMNS: tuple[str, ...] = ("funding_rate",)
OPEN_INTEREST_COLUMNS: tuple[str, ...] = ("open_interest",)


@runtime_checkable
class MarketDataSource(Protocol):
    """What every market-data source provides. Windows are half-open ``[start, end)`` in UTC."""

    name: str

    def fetch_ohlcv(
        self, symbol: str, market_type: str, timeframe: str, start: datetime, end: datetime
    ) -> pd.DataFrame:
        """Candles, shape ``(n_bars, 6)``: timestamp (bar open, UTC) + OHLCV."""
        ...

    def fetch_funding_rates(self, symbol: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Perpetual funding settlements, shape ``(n, 2)``: timestamp, funding_rate."""
        ...

    def fetch_open_interest(self, symbol: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Daily open interest, shape ``(n, 2)``: timestamp (day start), open_interest (USD).

        Returns an empty frame when the source has no open interest for the symbol.
        """
        ...


class FileSource:
    """Reads gzip or plain CSV files named as in the bundled data directory.

    File names, for symbol ``BTCUSDT``:

    * OHLCV: ``btcusdt_{market_type}_{timeframe}.csv[.gz]`` (e.g. ``btcusdt_perp_1h.csv.gz``)
    * funding: ``btcusdt_funding_*.csv[.gz]`` (e.g. ``btcusdt_funding_8h.csv.gz``)
    * open interest: ``btcusdt_perp_open_interest_usd_1d.csv[.gz]`` (optional)

    Every file has a header row and an ISO-8601 UTC ``timestamp`` column
    (``2023-01-01T00:00:00Z``).

    Args:
        directory: folder holding the files.

    Raises:
        SourceError: from the fetch methods, when a required file is missing, lacks a column, or
            holds a timestamp that does not parse.
    """

    name = "files"
    incremental = False

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"FileSource({str(self.directory)!r})"

    def _find(self, stem: str, what: str, required: bool = True) -> Path | None:
        if not self.directory.is_dir():
            raise SourceError(f"data directory {self.directory} does not exist")
        matches = sorted(p for p in self.directory.glob(f"{stem}.csv*") if p.name.endswith((".csv", ".csv.gz")))
        if not matches:
            if required:
                raise SourceError(f"no {what} file {stem}.csv or {stem}.csv.gz in {self.directory}")
            return None
        if len(matches) > 1:
            raise SourceError(f"several {what} files match {stem}.csv[.gz]: {[m.name for m in matches]}")
        return matches[0]

    @staticmethod
    def _read(path: Path, columns: tuple[str, ...], start: datetime, end: datetime) -> pd.DataFrame:
        """Read one file strictly: every line has the header's field count, every value cell is a
        number or empty (a missing value, which validation reports), every timestamp parses, and
        no timestamp appears twice with different values (exact repeats are left to the store,
        which writes them once and counts them).

        Raises:
            SourceError: naming the file, the line number, the column and the original text.
        """
        try:
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt", newline="") as fh:
                text = fh.read()
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc
        lines = text.splitlines()
        if not lines:
            raise SourceError(f"{path.name} is empty: expected a header line")
        header = lines[0].split(",")
        missing = [c for c in ("timestamp", *columns) if c not in header]
        if missing:
            raise SourceError(f"{path.name} lacks column(s) {missing}; has {header}")
        for number, line in enumerate(lines[1:], start=2):
            if line and line.count(",") != len(header) - 1:
                raise SourceError(f"{path.name} line {number}: {line.count(',') + 1} fields, expected "
                                  f"{len(header)} ({','.join(header)}): {line!r}")
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=True)
        line_of = [n for n, line in enumerate(lines[1:], start=2) if line]  # data row -> file line
        stamps = frame["timestamp"].str.strip()
        ts = pd.to_datetime(stamps, utc=True, format="ISO8601", errors="coerce")
        if ts.isna().any():
            row = int(ts.isna().to_numpy().argmax())
            raise SourceError(f"{path.name} line {line_of[row]}: timestamp {stamps.iloc[row]!r} "
                              "is not an ISO-8601 time")
        naive = ~stamps.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True)
        if naive.any():
            logger.warning("%s: %d timestamp(s) have no time zone (e.g. %r): taken as UTC", path.name,
                           int(naive.sum()), stamps[naive].iloc[0])
        out = pd.DataFrame({"timestamp": ts})
        for col in columns:
            cells = frame[col].str.strip()
            values = pd.to_numeric(cells.where(cells != ""), errors="coerce")
            # An empty cell (or 'nan') is a missing value, reported with its timestamp by validation.
            bad = values.isna() & ~cells.str.lower().isin(["", "nan"])
            if bad.any():
                row = int(bad.to_numpy().argmax())
                raise SourceError(f"{path.name} line {line_of[row]}, column {col}: {cells.iloc[row]!r} "
                                  f"is not a number (timestamp {stamps.iloc[row]})")
            out[col] = values
        twins = out[out["timestamp"].duplicated(keep=False)]
        if len(twins):
            clash = twins.groupby("timestamp").filter(lambda g: len(g.drop_duplicates()) > 1)
            if len(clash):
                first, second = clash.index[:2]
                raise SourceError(f"{path.name} lines {line_of[first]} and {line_of[second]}: timestamp "
                                  f"{stamps.iloc[first]} appears twice with different values: "
                                  f"{lines[line_of[first] - 1]!r} vs {lines[line_of[second] - 1]!r}")
        mask = (out["timestamp"] >= pd.Timestamp(start)) & (out["timestamp"] < pd.Timestamp(end))
        return out.loc[mask].reset_index(drop=True)

    def fetch_ohlcv(
        self, symbol: str, market_type: str, timeframe: str, start: datetime, end: datetime
    ) -> pd.DataFrame:
        """See :meth:`MarketDataSource.fetch_ohlcv`."""
        path = self._find(f"{symbol.lower()}_{market_type}_{timeframe}", "OHLCV")
        assert path is not None
        return self._read(path, OHLCV_COLUMNS, start, end)

    def ohlcv_extent(self, symbol: str, market_type: str, timeframe: str) -> tuple[datetime, datetime] | None:
        """Open times of the first and last candle in the file, or ``None`` for an empty file.

        Raises:
            SourceError: no such file, or it does not read (see :meth:`fetch_ohlcv`).
        """
        bars = self.fetch_ohlcv(symbol, market_type, timeframe, datetime.min.replace(tzinfo=UTC),
                                datetime.max.replace(tzinfo=UTC))
        if bars.empty:
            return None
        return bars["timestamp"].min().to_pydatetime(), bars["timestamp"].max().to_pydatetime()

    def fetch_funding_rates(self, symbol: str, start: datetime, end: datetime) -> pd.DataFrame:
        """See :meth:`MarketDataSource.fetch_funding_rates`."""
        path = self._find(f"{symbol.lower()}_funding_*", "funding-rate")
        assert path is not None
        return self._read(path, FUNDING_COLUMNS, start, end)

    def fetch_open_interest(self, symbol: str, start: datetime, end: datetime) -> pd.DataFrame:
        """See :meth:`MarketDataSource.fetch_open_interest`."""
        path = self._find(f"{symbol.lower()}_perp_open_interest_usd_1d", "open-interest", False)
        if path is None:
            logger.info("no open-interest file for %s in %s", symbol, self.directory)
            return pd.DataFrame({"timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
                                 "open_interest": pd.Series([], dtype=float)})
        return self._read(path, OPEN_INTEREST_COLUMNS, start, end)

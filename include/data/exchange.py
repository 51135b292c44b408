"""Exchange source: OHLCV, funding-rate and open-interest history from an exchange through ccxt.

Binance spot and USDT-M perpetual markets are supported (``exchange_id="binance"``); symbols
use the exchange's own notation (``BTCUSDT``) and ``market_type`` picks the spot or perpetual
market. The source pages through history with the exchange's maximum page size, honours ccxt's
client-side rate limiter, and retries transient failures (timeouts, HTTP 5xx, rate-limit
responses) with exponential backoff, preferring the server's ``Retry-After``.

It never returns an unfinished bar: a candle is kept only when its close time
(open + timeframe) is at or before both the requested ``end`` and the source's clock. It does
not fill gaps: a bar the exchange does not have is simply absent, and the ingestion step records
the gap in the store.

Open interest: Binance's ``openInterestHist`` (period ``1d``) returns snapshots stamped with the
time they were taken; the snapshot at D+1 00:00 UTC is the close of day D, which this source
returns under the day start D (the convention of the bundled data). Binance keeps only the most
recent 30 days of this endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from include.data.sources import FUNDING_COLUMNS, OHLCV_COLUMNS, OPEN_INTEREST_COLUMNS
from include.errors import SourceError, TransientSourceError
from include.redaction import MaskUrlSecrets, mask_exception, mask_url

logger = logging.getLogger(__name__)
#: ccxt logs each request's full URL (credentials included) at DEBUG on this logger.
_CCXT_LOGGER = "ccxt.base.exchange"
_MASK_FILTER = MaskUrlSecrets()

_DAY_MS = 86_400_000
#: Largest page per request: Binance API docs ("Market Data endpoints"), as capped by ccxt (klines: 1000).
PAGE_LIMITS = {"spot_ohlcv": 1000, "perp_ohlcv": 1000, "funding": 1000, "open_interest": 500}


def _ms(value: datetime) -> int:
    return int(pd.Timestamp(value).tz_convert("UTC").value // 1_000_000)


def _frame(rows: list[list[float]], columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["ts", *columns])
    out = pd.DataFrame({"timestamp": pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True)})
    for col in columns:
        out[col] = frame[col].astype("float64")
    return out.drop_duplicates("timestamp").sort_values("timestamp", ignore_index=True)


class ExchangeSource:
    """Market data from an exchange's public REST API via ccxt.

    Args:
        exchange_id: ccxt exchange id; only ``"binance"`` is supported.
        api_url: base URL replacing the exchange's hosts (``https://api.binance.com``,
            ``https://fapi.binance.com``), e.g. a local replay or a proxy. Paths are kept.
            Credentials in it (``user:password@``, a key or token query parameter) are masked
            wherever the source names the URL: its repr (stored with ingested data and gaps),
            its errors, the exceptions they chain, and ccxt's request log.
        max_retries: attempts after the first for a transient failure.
        backoff_s: first backoff in seconds; doubles per attempt up to ``max_backoff_s``.
        max_backoff_s: longest backoff.
        timeout_s: HTTP timeout per request.
        clock: returns "now" (aware UTC datetime); bars closing after it are dropped.
        sleep: the function used to wait between retries.

    Raises:
        SourceError: unsupported exchange id, or an ``api_url`` with a query or fragment (ccxt
            appends each endpoint's path to the URL, which would land inside the query). The
            fetch methods raise it for an unknown symbol or timeframe, a malformed response, or
            a transient failure that outlasts the retries; nothing is returned in those cases.
    """

    name = "exchange"
    incremental = True

    def __init__(self, exchange_id: str = "binance", *, api_url: str | None = None,
                 max_retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 timeout_s: float = 10.0, clock: Callable[[], datetime] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        import ccxt

        if exchange_id != "binance":
            raise SourceError(f"exchange {exchange_id!r} is not supported by the exchange source (binance)")
        if api_url and (urlsplit(api_url).query or urlsplit(api_url).fragment):
            raise SourceError(f"exchange API URL {mask_url(api_url)!r}: expected no query or fragment (the "
                              "endpoints' paths are appended to it); a proxy's credentials go in user:password@")
        self.exchange_id = exchange_id
        self.api_url = api_url.rstrip("/") if api_url else None
        logging.getLogger(_CCXT_LOGGER).addFilter(_MASK_FILTER)  # once: a filter is added at most once
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock or (lambda: datetime.now(UTC))
        self.sleep = sleep
        self.retries = 0
        self._ccxt = ccxt
        self.client = ccxt.binance({
            "enableRateLimit": True,
            # Kept so that each page's raw body can be checked: ccxt turns an object where a
            # list belongs into an empty page, which would read as "no more data".
            "enableLastJsonResponse": True,
            "timeout": int(timeout_s * 1000),
            "options": {"fetchMarkets": {"types": ["spot", "linear"]},
                        "adjustForTimeDifference": False, "fetchCurrencies": False},
        })
        if self.api_url:
            self.client.urls["api"] = {
                key: self.api_url + "/" + url.split("://", 1)[1].split("/", 1)[1]
                for key, url in self.client.urls["api"].items()
            }

    def __repr__(self) -> str:
        return f"ExchangeSource({self.exchange_id!r}{', ' + repr(mask_url(self.api_url)) if self.api_url else ''})"

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ccxt with retries on transient errors; translate every other failure.

        ccxt's and the HTTP client's errors name the request's full URL: they are masked
        (:func:`~include.redaction.mask_exception`) before they are quoted or chained.
        """
        ccxt = self._ccxt
        for attempt in range(self.max_retries + 1):
            try:
                return fn(*args, **kwargs)
            except ccxt.BadSymbol as exc:
                mask_exception(exc)
                raise SourceError(f"{self.exchange_id}: {what}: unknown symbol: {exc}") from exc
            except ccxt.OperationFailed as exc:
                # ccxt's recoverable class: NetworkError (timeouts, HTTP 5xx, rate limits) and
                # exchange-reported transient failures such as Binance -1001 "internal error".
                mask_exception(exc)
                if attempt == self.max_retries:
                    raise TransientSourceError(
                        f"{self.exchange_id}: {what} still failing after {self.max_retries} "
                        f"retries: {type(exc).__name__}: {exc}") from exc
                wait = min(self.backoff_s * 2 ** attempt, self.max_backoff_s)
                headers = self.client.last_response_headers or {}
                retry_after = headers.get("Retry-After") or headers.get("retry-after")
                if retry_after and str(retry_after).isdigit():
                    wait = min(max(wait, float(retry_after)), self.max_backoff_s)
                self.retries += 1
                logger.warning("%s: %s: %s; retry %d/%d in %.2f s", self.exchange_id, what,
                               type(exc).__name__, attempt + 1, self.max_retries, wait)
                self.sleep(wait)
            except ccxt.BaseError as exc:
                mask_exception(exc)
                raise SourceError(f"{self.exchange_id}: {what} failed: {type(exc).__name__}: {exc}") from exc
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                mask_exception(exc)
                raise SourceError(f"{self.exchange_id}: {what}: malformed response: {exc!r}") from exc
        raise AssertionError("unreachable")

    def _market(self, symbol: str, market_type: str) -> dict[str, Any]:
        if market_type not in ("spot", "perp"):
            raise SourceError(f"market_type {market_type!r} is not supported (spot, perp)")
        if not self.client.markets:
            self._call("load markets", self.client.load_markets)
        wanted = "spot" if market_type == "spot" else "swap"
        for market in self.client.markets_by_id.get(symbol, []) if self.client.markets_by_id else []:
            if market.get("type") == wanted and (market_type == "spot" or market.get("linear")):
                return market
        raise SourceError(f"{self.exchange_id} has no {market_type} market {symbol!r}")

    def _paginate(self, what: str, fetch: Callable[[int, int], list[Any]], parse: Callable[[Any], list[float]],
                  start: datetime, end: datetime, limit: int, step_ms: int) -> list[list[float]]:
        """Pages of rows ``[ts_ms, values…]`` with ``start <= ts < end``, oldest first."""
        since, end_ms, rows = _ms(start), _ms(end), []
        while since < end_ms:
            page = self._call(what, fetch, since, limit)
            raw = self.client.last_json_response
            if not isinstance(page, list) or not isinstance(raw, list) or len(raw) != len(page):
                raise SourceError(f"{self.exchange_id}: {what}: malformed response: expected a JSON "
                                  f"list of records, got {str(raw)[:200]!r}")
            try:
                parsed = [parse(item) for item in page]
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                raise SourceError(f"{self.exchange_id}: {what}: malformed response: {exc!r}") from exc
            parsed = [r for r in parsed if since <= r[0] < end_ms]
            rows.extend(parsed)
            if not parsed:
                break
            next_since = int(parsed[-1][0]) + step_ms
            if next_since <= since:
                raise SourceError(f"{self.exchange_id}: {what}: pagination did not advance at {since}")
            since = next_since
        return rows

    # -- MarketDataSource -------------------------------------------------------------------
    def fetch_ohlcv(self, symbol: str, market_type: str, timeframe: str, start: datetime,
                    end: datetime) -> pd.DataFrame:
        """Finished candles with open time in ``[start, end)``; see :class:`MarketDataSource`.

        Raises:
            SourceError: unknown symbol or timeframe, malformed response, retries exhausted.
        """
        market = self._market(symbol, market_type)
        if timeframe not in (self.client.timeframes or {}):
            raise SourceError(f"{self.exchange_id} has no timeframe {timeframe!r}; "
                              f"expected one of {sorted(self.client.timeframes)}")
        step = int(self.client.parse_timeframe(timeframe) * 1000)
        horizon = min(_ms(end), _ms(self.clock()))
        what = f"OHLCV {symbol} {market_type} {timeframe}"
        limit = PAGE_LIMITS[f"{market_type}_ohlcv"]

        def fetch(since: int, limit: int) -> list[Any]:
            return self.client.fetch_ohlcv(market["symbol"], timeframe, since, limit,
                                           {"endTime": _ms(end) - 1})

        def parse(row: Any) -> list[float]:
            if len(row) < 6 or any(v is None for v in row[:6]):
                raise ValueError(f"candle {row!r} lacks OHLCV fields")
            return [int(row[0]), *(float(v) for v in row[1:6])]

        rows = self._paginate(what, fetch, parse, start, end, limit, step)
        finished = [r for r in rows if r[0] + step <= horizon]
        if len(finished) < len(rows):
            logger.info("%s: dropped %d unfinished bar(s)", what, len(rows) - len(finished))
        logger.info("%s [%s, %s): %d bars", what, start, end, len(finished))
        return _frame(finished, OHLCV_COLUMNS)

    def fetch_funding_rates(self, symbol: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Funding settlements in ``[start, end)``, settlement times rounded to the second.

        Raises:
            SourceError: unknown symbol, malformed response, retries exhausted.
        """
        market = self._market(symbol, "perp")
        what = f"funding rates {symbol}"

        def fetch(since: int, limit: int) -> list[Any]:
            return self.client.fetch_funding_rate_history(market["symbol"], since, limit,
                                                          {"endTime": _ms(end) - 1})

        def parse(item: Any) -> list[float]:
            # Binance's fundingTime carries a few ms of jitter past the settlement second.
            ts = int(round(int(item["timestamp"]) / 1000) * 1000)
            return [ts, float(item["fundingRate"])]

        rows = self._paginate(what, fetch, parse, start, end, PAGE_LIMITS["funding"], 1000)
        logger.info("%s [%s, %s): %d settlements", what, start, end, len(rows))
        return _frame(rows, FUNDING_COLUMNS)

    def fetch_open_interest(self, symbol: str, start: datetime, end: datetime) -> pd.DataFrame:
        """Daily open-interest closes (USD) with day start in ``[start, end)``.

        Raises:
            SourceError: unknown symbol, malformed response, retries exhausted.
        """
        market = self._market(symbol, "perp")
        what = f"open interest {symbol}"
        end_ms = _ms(end)

        def fetch(since: int, limit: int) -> list[Any]:
            # Snapshots are stamped one day after the day they close.
            return self.client.fetch_open_interest_history(
                market["symbol"], "1d", since + _DAY_MS, limit, {"endTime": end_ms + _DAY_MS - 1})

        def parse(item: Any) -> list[float]:
            value = item["openInterestValue"]
            if value is None:
                raise ValueError(f"open-interest snapshot {item.get('info')!r} has no USD value")
            return [int(item["timestamp"]) - _DAY_MS, float(value)]

        rows = self._paginate(what, fetch, parse, start, end, PAGE_LIMITS["open_interest"], _DAY_MS)
        logger.info("%s [%s, %s): %d days", what, start, end, len(rows))
        return _frame(rows, OPEN_INTEREST_COLUMNS)

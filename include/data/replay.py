"""A local HTTP server that answers Binance's public REST endpoints from market-data files.

It lets the exchange source (:class:`~include.data.exchange.ExchangeSource`, built on ccxt) run
end to end without a network: point the source at ``server.url`` and it paginates, retries and
parses real Binance-shaped responses built from the bundled real data. Tests, benchmarks and
offline demos use it; it is not a market simulator and serves only what the files hold.

Endpoints (Binance API docs, "Market Data"):

=====================================  =============================================
``GET /api/v3/exchangeInfo``           spot markets of the served symbols
``GET /api/v3/klines``                 spot candles (max 1000 per page)
``GET /fapi/v1/exchangeInfo``          USDT-M perpetual markets
``GET /fapi/v1/klines``                perpetual candles (max 1500 per page)
``GET /fapi/v1/fundingRate``           funding history (max 1000 per page)
``GET /futures/data/openInterestHist`` open-interest snapshots (max 500 per page)
=====================================  =============================================

The server's clock (``now``) is settable: a candle whose bar contains ``now`` is served as the
exchange serves the current bar (unfinished, close = open), and nothing later exists. Faults can
be scripted per path prefix (:meth:`BinanceReplayServer.fail_next`): an HTTP status with a JSON
error body, or a malformed body. Every request is logged in :attr:`BinanceReplayServer.requests`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

from include.data.sources import OHLCV_COLUMNS, FileSource

logger = logging.getLogger(__name__)

_INTERVAL_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "4h": 14_400_000,
                "1d": 86_400_000}
_DAY_MS = 86_400_000


def _ms(ts: pd.Series) -> np.ndarray:
    return ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy(dtype="int64")


def _market(symbol: str, perp: bool) -> dict[str, Any]:
    base, quote = symbol[:-4], symbol[-4:]
    filters = [
        {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000", "tickSize": "0.01"},
        {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
    ]
    market = {
        "symbol": symbol, "status": "TRADING", "baseAsset": base, "quoteAsset": quote,
        "baseAssetPrecision": 8, "quotePrecision": 8, "quoteAssetPrecision": 8,
        "filters": filters, "orderTypes": ["LIMIT", "MARKET"],
    }
    if perp:
        market.update({"pair": symbol, "contractType": "PERPETUAL", "marginAsset": quote,
                       "pricePrecision": 2, "quantityPrecision": 3, "onboardDate": 1568102400000,
                       "deliveryDate": 4133404800000, "underlyingType": "COIN"})
    else:
        market.update({"isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                       "permissions": ["SPOT"], "permissionSets": [["SPOT"]]})
    return market


class BinanceReplayServer:
    """Serve a directory of market-data files as Binance's public REST API on 127.0.0.1.

    Args:
        directory: files in the :class:`~include.data.sources.FileSource` layout.
        symbols: symbols to serve, e.g. ``("BTCUSDT",)``.
        now: the server's clock; default: just after the last bundled candle.

    Use as a context manager; :attr:`url` is the base URL to give the exchange source.
    """

    def __init__(self, directory: str | Path, symbols: tuple[str, ...] = ("BTCUSDT",),
                 now: datetime | None = None) -> None:
        source = FileSource(directory)
        lo, hi = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        self.symbols = symbols
        self._candles: dict[tuple[str, str], np.ndarray] = {}
        self._funding: dict[str, np.ndarray] = {}
        self._oi: dict[str, np.ndarray] = {}
        for symbol in symbols:
            for market in ("spot", "perp"):
                frame = source.fetch_ohlcv(symbol, market, "1h", lo, hi)
                self._candles[(symbol, market)] = np.column_stack(
                    [_ms(frame["timestamp"]), frame[list(OHLCV_COLUMNS)].to_numpy(dtype=float)])
            funding = source.fetch_funding_rates(symbol, lo, hi)
            self._funding[symbol] = np.column_stack([_ms(funding["timestamp"]), funding["funding_rate"]])
            oi = source.fetch_open_interest(symbol, lo, hi)
            # Binance stamps a daily snapshot with the time it was taken: the close of day D is
            # the snapshot at D+1 00:00.
            self._oi[symbol] = np.column_stack([_ms(oi["timestamp"]) + _DAY_MS, oi["open_interest"]])
        last = max(int(c[-1, 0]) for c in self._candles.values())
        self.now_ms = int(pd.Timestamp(now).value // 1_000_000) if now else last + 3_600_000
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._faults: deque[tuple[str, int | str]] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ----------------------------------------------------------------------------
    def set_now(self, now: datetime) -> None:
        """Move the server's clock."""
        self.now_ms = int(pd.Timestamp(now).value // 1_000_000)

    def fail_next(self, path_prefix: str, fault: int | str, times: int = 1) -> None:
        """Answer the next ``times`` requests whose path starts with ``path_prefix`` with a fault.

        Args:
            fault: an HTTP status (e.g. 503, 429) or ``"malformed"`` (HTTP 200, a body that is
                not the endpoint's shape).
        """
        with self._lock:
            self._faults.extend([(path_prefix, fault)] * times)

    def clear_faults(self) -> None:
        """Forget scripted faults not yet served."""
        with self._lock:
            self._faults.clear()

    def requests_to(self, path: str) -> list[dict[str, str]]:
        """Query parameters of each request made to ``path``, in order."""
        return [q for p, q in self.requests if p == path]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> BinanceReplayServer:
        """Listen on a free port of 127.0.0.1 in a background thread."""
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                replay._handle(self)

            def log_message(self, fmt: str, *args: Any) -> None:
                logger.debug("replay: " + fmt, *args)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> BinanceReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP -------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parsed = urlparse(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        path = parsed.path
        with self._lock:
            self.requests.append((path, query))
            fault = None
            for i, (prefix, kind) in enumerate(self._faults):
                if path.startswith(prefix):
                    fault = kind
                    del self._faults[i]
                    break
        if fault == "malformed":
            return self._send(handler, 200, {"unexpected": "shape", "data": None})
        if fault == 429:
            return self._send(handler, 429, {"code": -1003, "msg": "Too many requests; replayed."},
                              {"Retry-After": "1"})
        if isinstance(fault, int):  # what a CDN in front of the API answers: not JSON
            return self._send(handler, fault, f"<html>{fault} replayed error</html>", raw=True)
        routes = {
            "/api/v3/exchangeInfo": lambda q: self._exchange_info(perp=False),
            "/fapi/v1/exchangeInfo": lambda q: self._exchange_info(perp=True),
            "/api/v3/klines": lambda q: self._klines(q, "spot", 1000),
            "/fapi/v1/klines": lambda q: self._klines(q, "perp", 1500),
            "/fapi/v1/fundingRate": self._funding_rate,
            "/futures/data/openInterestHist": self._open_interest,
        }
        route = routes.get(path)
        if route is None:
            return self._send(handler, 404, {"code": -1, "msg": f"no such endpoint {path}"})
        try:
            status, body = route(query)
        except (KeyError, ValueError) as exc:
            status, body = 400, {"code": -1102, "msg": f"bad parameter: {exc}"}
        self._send(handler, status, body)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: Any,
              headers: dict[str, str] | None = None, raw: bool = False) -> None:
        payload = body.encode() if raw else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/html" if raw else "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(payload)

    def _exchange_info(self, perp: bool) -> tuple[int, Any]:
        return 200, {"timezone": "UTC", "serverTime": self.now_ms, "rateLimits": [],
                     "symbols": [_market(s, perp) for s in self.symbols]}

    def _symbol(self, query: dict[str, str]) -> str | None:
        symbol = query.get("symbol", "")
        return symbol if symbol in self.symbols else None

    @staticmethod
    def _invalid_symbol() -> tuple[int, Any]:
        return 400, {"code": -1121, "msg": "Invalid symbol."}

    def _window(self, rows: np.ndarray, query: dict[str, str], limit_max: int,
                default_limit: int) -> np.ndarray:
        limit = min(int(query.get("limit", default_limit)), limit_max)
        start = int(query.get("startTime", 0))
        end = int(query.get("endTime", 2**62))
        mask = (rows[:, 0] >= start) & (rows[:, 0] <= end) & (rows[:, 0] <= self.now_ms)
        return rows[mask][:limit]

    def _klines(self, query: dict[str, str], market: str, limit_max: int) -> tuple[int, Any]:
        symbol = self._symbol(query)
        if symbol is None:
            return self._invalid_symbol()
        interval = query.get("interval")
        if interval != "1h":
            return 400, {"code": -1120, "msg": "Invalid interval."}
        step = _INTERVAL_MS[interval]
        rows = self._window(self._candles[(symbol, market)], query, limit_max, 500)
        out = []
        for t, o, h, lo, c, v in rows:
            t = int(t)
            if t + step > self.now_ms:  # the bar in progress: only its open is known
                h, lo, c, v = o, o, o, 0.0
            out.append([t, *(repr(float(x)) for x in (o, h, lo, c, v)), t + step - 1, "0", 0, "0", "0", "0"])
        return 200, out

    def _funding_rate(self, query: dict[str, str]) -> tuple[int, Any]:
        symbol = self._symbol(query)
        if symbol is None:
            return self._invalid_symbol()
        rows = self._window(self._funding[symbol], query, 1000, 100)
        return 200, [{"symbol": symbol, "fundingTime": int(t) + 3, "fundingRate": repr(float(r)), "markPrice": ""}
                     for t, r in rows]

    def _open_interest(self, query: dict[str, str]) -> tuple[int, Any]:
        symbol = self._symbol(query)
        if symbol is None:
            return self._invalid_symbol()
        if query.get("period") != "1d":
            return 400, {"code": -1130, "msg": "Invalid period: this replay serves 1d snapshots."}
        rows = self._window(self._oi[symbol], query, 500, 30)
        return 200, [{"symbol": symbol, "sumOpenInterest": "0", "sumOpenInterestValue": repr(float(v)),
                      "timestamp": int(t)} for t, v in rows]

"""A market's identity: the market, and the registered model (one market and one target).

:class:`Market` is what ingestion writes a series under, what a universe file lists and what a run
configuration trains on; :class:`RegisteredModel` adds the target (label horizon and rule), and
everything that names a market's models (the registry, the run configuration, the run folders,
the serving API) derives the name from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from include.errors import ConfigError, RegistryError
from include.paths import check_name

#: Bar length in seconds for every timeframe the pipeline understands (ccxt notation).
TIMEFRAME_SECONDS: dict[str, int] = {"15m": 900, "1h": 3600, "4h": 14_400, "1d": 86_400}


def bars_per_year(bar_seconds: int) -> float:
    """Bars of ``bar_seconds`` in a year of 365.25 days (crypto markets trade every day), the
    factor annualised Sharpe ratios scale by."""
    return 365.25 * 86_400 / bar_seconds


@dataclass(frozen=True)
class Market:
    """One market: an exchange's series of one instrument, market type and bar length.

    Attributes:
        exchange: ccxt exchange id, e.g. ``binance``.
        symbol: instrument, exchange notation without separator, e.g. ``BTCUSDT``.
        market_type: ``perp`` or ``spot`` (candles; funding and open interest are a perpetual's).
        timeframe: bar length in ccxt notation, e.g. ``1h`` (:data:`TIMEFRAME_SECONDS`).
    """

    exchange: str
    symbol: str
    market_type: str
    timeframe: str

    @property
    def bar(self) -> timedelta:
        """The length of one bar."""
        return timedelta(seconds=TIMEFRAME_SECONDS[self.timeframe])


#: The default label rule, (threshold mode, threshold, volatility window in bars): the run
#: configuration's default, and the rule registered-model names leave out. k = 0.43 gives three
#: equally likely classes for Gaussian returns (include/labels.py).
DEFAULT_LABEL_RULE: tuple[str, float, int] = ("volatility", 0.43, 168)


@dataclass(frozen=True)
class RegisteredModel:
    """One market and one target: what a registered model forecasts. Its versions compete only
    with each other.

    Attributes:
        exchange: ccxt exchange id, e.g. ``binance``.
        symbol: instrument without separator, upper case, e.g. ``BTCUSDT``.
        market_type: ``perp`` or ``spot``.
        timeframe: bar length in ccxt notation, e.g. ``1h``.
        label_horizon_bars: forward-return horizon of the label, in bars.
        label_threshold_mode: ``volatility``, ``fixed`` or ``triple_barrier`` (see :mod:`include.labels`).
        label_threshold: k for volatility labels, or the log-return threshold for fixed ones.
        label_vol_window_bars: trailing window of the volatility estimate, in bars.
    """

    exchange: str
    symbol: str
    market_type: str
    timeframe: str
    label_horizon_bars: int
    label_threshold_mode: str = DEFAULT_LABEL_RULE[0]
    label_threshold: float = DEFAULT_LABEL_RULE[1]
    label_vol_window_bars: int = DEFAULT_LABEL_RULE[2]

    @property
    def name(self) -> str:
        """Readable unique name: ``<exchange>-<symbol>-<market type>-<timeframe>-h<horizon>``.

        Raises:
            ConfigError: the fields do not form a safe path component
                (:func:`include.paths.check_name`).

        A label threshold rule other than the default (volatility, k = 0.43, 168 bars) is
        appended (``-fixed0.005``, ``-vol0.5w336``, ``-tb0.43w168``), so two targets never share a name.
        """
        name = (f"{self.exchange.lower()}-{self.symbol.lower()}-{self.market_type}-{self.timeframe}"
                f"-h{self.label_horizon_bars}")
        rule = (self.label_threshold_mode, float(self.label_threshold), int(self.label_vol_window_bars))
        if rule != DEFAULT_LABEL_RULE:
            if self.label_threshold_mode == "fixed":
                name += f"-fixed{self.label_threshold:g}"
            elif self.label_threshold_mode == "triple_barrier":
                name += f"-tb{self.label_threshold:g}w{self.label_vol_window_bars}"
            else:
                name += f"-vol{self.label_threshold:g}w{self.label_vol_window_bars}"
        return check_name(name, "registered model name")

    @classmethod
    def from_lineage(cls, lineage: dict[str, Any]) -> RegisteredModel:
        """The registered model a version's lineage (``metadata.json``) describes.

        Raises:
            RegistryError: the lineage lacks the market or label fields, or they do not form a
                safe name.
        """
        config = lineage.get("config") or {}
        try:
            model = cls(exchange=str(lineage["exchange"]).lower(), symbol=str(lineage["symbol"]).upper(),
                       market_type=lineage["market_type"], timeframe=lineage["timeframe"],
                       label_horizon_bars=int(config["label_horizon_bars"]),
                       label_threshold_mode=config.get("label_threshold_mode", DEFAULT_LABEL_RULE[0]),
                       label_threshold=float(config.get("label_threshold", DEFAULT_LABEL_RULE[1])),
                       label_vol_window_bars=int(config.get("label_vol_window_bars", DEFAULT_LABEL_RULE[2])))
        except KeyError as exc:
            raise RegistryError(f"lineage lacks {exc.args[0]!r}: cannot tell which registered model it belongs to") \
                from None
        try:
            model.name  # noqa: B018 - validates every field that forms it
        except ConfigError as exc:
            raise RegistryError(f"lineage names no valid registered model: {exc}") from None
        return model

    @property
    def market(self) -> Market:
        """The market this model forecasts."""
        return Market(self.exchange, self.symbol, self.market_type, self.timeframe)

    def to_dict(self) -> dict[str, Any]:
        """JSON view with the name."""
        return {"name": self.name, **asdict(self)}

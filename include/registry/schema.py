"""Registry tables (migrations 0003, 0004 and 0011) and the value types: registered model, alias pointer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from include.errors import ConfigError, RegistryError
from include.paths import check_name

PRODUCTION, CHALLENGER = "production", "challenger"

#: Ledger events that moved production away from a version on purpose.
ROLLBACK_EVENTS = ("rollback", "auto_rollback")

metadata = sa.MetaData()

model_table = sa.Table(
    "registered_model", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("exchange", sa.String(32), nullable=False),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("market_type", sa.String(8), nullable=False),
    sa.Column("timeframe", sa.String(8), nullable=False),
    sa.Column("label_horizon_bars", sa.Integer, nullable=False),
    sa.Column("label_rule", sa.JSON, nullable=False, comment="label threshold rule: mode, threshold, vol_window_bars"),
    sa.Column("created_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

version_table = sa.Table(
    "model_version", metadata,
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(128), sa.ForeignKey("registered_model.name", name="fk_model_version_model"),
              nullable=False, index=True),
    sa.Column("interval_end", sa.BigInteger, nullable=False, comment="end of the training data, ms UTC"),
    sa.Column("registered_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("files", sa.JSON, nullable=False, comment="file name -> sha256"),
    sa.Column("artifact_path", sa.String(512), nullable=False, comment="relative to the registry root"),
    sa.Column("lineage", sa.JSON, nullable=False, comment="the version's metadata.json"),
    sa.Column("deleted_at", sa.BigInteger, nullable=True, comment="artifacts removed by retention"),
)

alias_table = sa.Table(
    "model_alias", metadata,
    sa.Column("model", sa.String(128), sa.ForeignKey("registered_model.name"), primary_key=True),
    sa.Column("alias", sa.String(32), primary_key=True),
    sa.Column("version", sa.String(64), sa.ForeignKey("model_version.version"), nullable=False),
    sa.Column("since", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

event_table = sa.Table(
    "model_alias_event", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(128), nullable=False, index=True),
    sa.Column("alias", sa.String(32), nullable=False, index=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("from_version", sa.String(64), nullable=True),
    sa.Column("to_version", sa.String(64), nullable=True),
    sa.Column("candidate", sa.String(64), nullable=True),
    sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    sa.Column("dag_id", sa.String(250), nullable=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decision", sa.JSON, nullable=True, comment="the gate decision record"),
)

smoke_test_table = sa.Table(
    "smoke_test", metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("prediction", sa.JSON, nullable=False, comment="what the smoke test's prediction returned"),
    sa.Column("at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
)

#: The label threshold rule that registered-model names leave out (the configuration default).
DEFAULT_LABEL_RULE = ("volatility", 0.43, 168)

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
        label_threshold_mode: ``volatility`` or ``fixed`` (see :mod:`include.labels`).
        label_threshold: k for volatility labels, or the log-return threshold for fixed ones.
        label_vol_window_bars: trailing window of the volatility estimate, in bars.
    """

    exchange: str
    symbol: str
    market_type: str
    timeframe: str
    label_horizon_bars: int
    label_threshold_mode: str = "volatility"
    label_threshold: float = 0.43
    label_vol_window_bars: int = 168

    @property
    def name(self) -> str:
        """Readable unique name: ``<exchange>-<symbol>-<market type>-<timeframe>-h<horizon>``.

        Raises:
            ConfigError: the fields do not form a safe path component
                (:func:`include.paths.check_name`).

        A label threshold rule other than the default (volatility, k = 0.43, 168 bars) is
        appended (``-fixed0.005``, ``-vol0.5w336``), so two targets never share a name.
        """
        name = (f"{self.exchange.lower()}-{self.symbol.lower()}-{self.market_type}-{self.timeframe}"
                f"-h{self.label_horizon_bars}")
        rule = (self.label_threshold_mode, float(self.label_threshold), int(self.label_vol_window_bars))
        if rule != DEFAULT_LABEL_RULE:
            if self.label_threshold_mode == "fixed":
                name += f"-fixed{self.label_threshold:g}"
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
                       label_threshold_mode=config.get("label_threshold_mode", "volatility"),
                       label_threshold=float(config.get("label_threshold", 0.43)),
                       label_vol_window_bars=int(config.get("label_vol_window_bars", 168)))
        except KeyError as exc:
            raise RegistryError(f"lineage lacks {exc.args[0]!r}: cannot tell which registered model it belongs to") \
                from None
        try:
            model.name  # noqa: B018 - validates every field that forms it
        except ConfigError as exc:
            raise RegistryError(f"lineage names no valid registered model: {exc}") from None
        return model

    def to_dict(self) -> dict[str, Any]:
        """JSON view with the name."""
        return {"name": self.name, **asdict(self)}

@dataclass(frozen=True)
class AliasPointer:
    """Where an alias of a registered model points.

    Attributes:
        model: registered model name.
        alias: ``production``, ``challenger``, …
        version: the version id.
        since: ISO time of the move.
        run_id: DAG run (or ``cli:<user>``) that moved it.
        reason: why.
        previous: the version it pointed at before the last move, if any.
    """

    model: str
    alias: str
    version: str
    since: str
    run_id: str
    reason: str
    previous: str | None

"""Typed, validated configuration: deployment settings and per-run parameters.

Two objects:

* :class:`Settings` — where things live (market database, data directory, model registry, run
  artifacts). Read from environment variables so the same code runs embedded, in tests and in production.
* :class:`RunConfig` — the knobs of one retraining run (symbol, windows, labels, models, gate).
  The DAG's ``Param`` trigger form mirrors these fields; :meth:`RunConfig.from_params` validates
  them and raises :class:`~include.errors.ConfigError` naming the offending field.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from include.errors import ConfigError
from include.extensions import family_names, feature_names
from include.feature_names import KNOWN_FEATURES
from include.identity import DEFAULT_LABEL_RULE, TIMEFRAME_SECONDS, Market, RegisteredModel
from include.parameters import Declared, FormField, Interval, accepts, declare
from include.paths import BUNDLED_DATA_DIR, PROJECT_ROOT, market_data_dir
from include.storage import location

#: The model families this code defines (:mod:`include.training`).
BUILTIN_FAMILIES: tuple[str, ...] = ("lightgbm", "xgboost", "random_forest", "logistic")
#: Every model family a run may name: the built-in ones and those installed packages declare
#: (:mod:`include.extensions`).
MODEL_FAMILIES: tuple[str, ...] = BUILTIN_FAMILIES + tuple(n for n in family_names() if n not in BUILTIN_FAMILIES)

#: The quality gate's skill tests (include/gate/, checks 1-3), the names ``gate_required_checks``
#: chooses from.
SKILL_CHECKS: tuple[str, ...] = ("beats_baselines_f1", "beats_prior_log_loss", "beats_trading_baselines")

#: Most days a run parameter may count (100 years): the dates a run derives from them (training
#: start, feature warm-up, ingestion start) stay inside pandas' nanosecond range (1677-2262).
MAX_DAYS = 36_525


def env_int(name: str, default: int | None) -> int | None:
    """A positive integer from environment variable ``name``, or ``default`` when it is unset or empty.

    Raises:
        ConfigError: the value is not an integer, or is below 1; the message names the variable.
    """
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if value < 1:
        raise ConfigError(f"{name}={raw!r}: expected at least 1")
    return value


#: Registry retention: versions of a registered model kept besides every version that ever held
#: production (the weekly run's ``apply_retention`` and ``python -m include.registry cleanup``).
REGISTRY_KEEP_LAST = 20


@dataclass(frozen=True)
class Settings:
    """Deployment settings, read from the environment at call time (never at DAG parse time).

    Attributes:
        data_dir: directory of market-data files read by the file source
            (``MARKET_DATA_DIR``; default: the bundled Binance data in ``data/binance``).
        market_db_url: SQLAlchemy URL of the market store; see :func:`market_db_url`.
        registry_dir: root of the model registry (``MODEL_REGISTRY_DIR``; default ``models/``).
        runs_dir: root of per-run artifacts such as feature files, candidate models and validation reports
            (``RUN_ARTIFACTS_DIR``; default ``var/runs``). Both: a path or ``s3://`` URI (:mod:`include.storage`).
        exchange_api_url: base URL replacing the exchange's API hosts for the exchange source
            (``EXCHANGE_API_URL``; default: the exchange's own), e.g. a proxy or a local replay.
        registry_keep_last: retention: registry versions kept besides every version that ever
            held production (``MODEL_REGISTRY_KEEP_LAST``; default 20).
    """

    data_dir: Path
    market_db_url: str
    registry_dir: Any
    runs_dir: Any
    exchange_api_url: str | None = None
    registry_keep_last: int = REGISTRY_KEEP_LAST

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from environment variables, falling back to project-local defaults."""
        var = PROJECT_ROOT / "var"
        default_db = f"sqlite:///{var / 'market.sqlite'}"
        return cls(
            data_dir=market_data_dir(),
            market_db_url=market_db_url(default_db),
            registry_dir=location(os.environ.get("MODEL_REGISTRY_DIR") or PROJECT_ROOT / "models"),
            runs_dir=location(os.environ.get("RUN_ARTIFACTS_DIR") or var / "runs"),
            exchange_api_url=os.environ.get("EXCHANGE_API_URL") or None,
            registry_keep_last=env_int("MODEL_REGISTRY_KEEP_LAST", REGISTRY_KEEP_LAST) or REGISTRY_KEEP_LAST,
        )

    @classmethod
    def in_folder(cls, root: Path, data_dir: Path | None = None, *, market_db_url: str | None = None) -> Settings:
        """A self-contained deployment under ``root``: its own SQLite market store
        (``market.sqlite``), model registry (``models/``) and run folders (``runs/``), reading
        market files from ``data_dir`` (default: the bundled data). For benchmarks and tests.

        Args:
            market_db_url: another market store (a PostgreSQL database) instead of the SQLite file.
        """
        return cls(data_dir=data_dir or BUNDLED_DATA_DIR,
                   market_db_url=market_db_url or f"sqlite:///{Path(root) / 'market.sqlite'}",
                   registry_dir=Path(root) / "models", runs_dir=Path(root) / "runs")


def connection_to_url(conn_type: str, *, host: str | None, port: int | None, schema: str | None,
                      login: str | None, password: str | None, extra: dict[str, Any]) -> str:
    """SQLAlchemy URL of an Airflow connection to a PostgreSQL or SQLite database.

    A ``postgres`` connection maps to ``postgresql+psycopg2://login:password@host:port/schema``
    with the connection's extras (e.g. ``sslmode``) as query parameters; a ``sqlite`` connection's
    host is the database file.

    Raises:
        ConfigError: another connection type, or a PostgreSQL connection without host or schema.
    """
    import sqlalchemy as sa

    if conn_type in ("postgres", "postgresql"):
        if not host or not schema:
            raise ConfigError("market database connection needs a host and a schema (database name)")
        query = {k: str(v) for k, v in extra.items() if isinstance(v, (str, int, float))}
        url = sa.engine.URL.create("postgresql+psycopg2", username=login or None,
                                   password=password or None, host=host, port=port or None,
                                   database=schema, query=query)
        return url.render_as_string(hide_password=False)
    if conn_type == "sqlite":
        if not host:
            raise ConfigError("sqlite market database connection needs the file path as host")
        return f"sqlite:///{host}"
    raise ConfigError(f"market database connection type {conn_type!r} is not supported (postgres, sqlite)")


def market_db_url(default: str) -> str:
    """Where the market store lives, first match wins.

    1. ``MARKET_DB_URL``: a SQLAlchemy URL (``postgresql+psycopg2://…`` or ``sqlite:///…``).
    2. The Airflow connection named by ``MARKET_DB_CONN_ID`` (default ``market_db``), e.g.
       ``AIRFLOW_CONN_MARKET_DB=postgresql://user:pass@host:5432/market`` or one made in the UI.
    3. ``default``: the embedded SQLite file.

    Raises:
        ConfigError: the connection exists but is not a PostgreSQL or SQLite connection.
    """
    if os.environ.get("MARKET_DB_URL"):
        return os.environ["MARKET_DB_URL"]
    conn_id = os.environ.get("MARKET_DB_CONN_ID", "market_db")
    try:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:  # the library used without Airflow installed
        return default
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return default
    return connection_to_url(conn.conn_type, host=conn.host, port=conn.port, schema=conn.schema,
                             login=conn.login, password=conn.password, extra=conn.extra_dejson)


#: Sections of the trigger form, in the order shown.
FORM_SECTIONS = DATA, LABELS, CV, ENSEMBLE, GATE, TRADING = (
    "Data", "Labels", "Models and cross-validation", "Ensemble", "Quality gate", "Trading simulation")
#: The tuning DAG's own section, and the monitoring DAG's policy section.
TUNING, POLICY = "Tuning", "Monitoring policy"


@dataclass(frozen=True)
class RunConfig(Declared):
    """Parameters of one weekly retraining run. Every field has a default and a description.

    Raises:
        ConfigError: from ``__post_init__`` when a value is out of range, or a number (alone, in
            a tuple or in a mapping) is NaN or infinite; the message names the field and the
            accepted values.
    """

    exchange: str = declare("Exchange id (ccxt notation) the data belongs to.", default="binance")
    symbol: str = declare("Instrument, exchange notation without separator, e.g. BTCUSDT.", default="BTCUSDT")
    market_type: Literal["perp", "spot"] = declare(
        "Market of the OHLCV candles: 'perp' (USDT-M perpetual) or 'spot'.", default="perp"
    )
    timeframe: str = declare("Candle timeframe (ccxt notation).", default="1h", choices=tuple(TIMEFRAME_SECONDS))
    train_window_days: int = declare(
        "Length of the training window in days, ending at the run's data_interval_end.", default=730,
        interval=Interval(14, MAX_DAYS), form=FormField(DATA, "Training window (days)"),
    )
    label_horizon_bars: int = declare("Forward-return horizon of the label, in bars.", default=4,
                                   interval=Interval(1, 168), form=FormField(LABELS, "Horizon (bars)"))
    label_threshold_mode: Literal["volatility", "fixed", "triple_barrier"] = declare(
        "'volatility': threshold = k * sigma * sqrt(horizon) with sigma the trailing std of "
        "1-bar log returns; 'fixed': threshold is a log-return fraction; 'triple_barrier': the "
        "volatility threshold as profit-take and stop-loss barriers on the path of closes, the "
        "first touched within the horizon decides (range if neither).",
        default=DEFAULT_LABEL_RULE[0], form=FormField(LABELS, "Threshold mode"),
    )
    label_threshold: float = declare(
        "k for 'volatility' and 'triple_barrier' mode (0.43 gives equal thirds for Gaussian "
        "returns with 'volatility'), or the "
        "log-return threshold for 'fixed' mode (0.005 = 0.5 %).",
        default=DEFAULT_LABEL_RULE[1], interval=Interval(0, None, low_open=True), form=FormField(LABELS, "Threshold"),
    )
    label_vol_window_bars: int = declare(
        "Trailing window, in bars, of the volatility estimate used by 'volatility' and "
        "'triple_barrier' labels.",
        default=DEFAULT_LABEL_RULE[2], interval=Interval(2, 10_000),
    )
    models: tuple[str, ...] = declare(
        "Model families to train (subset of lightgbm, xgboost, random_forest, logistic and the "
        "families installed packages declare, include/extensions.py).",
        default=("lightgbm", "xgboost", "random_forest", "logistic"), members=lambda: MODEL_FAMILIES,
        form=FormField(CV, "Model families", {"examples": list(MODEL_FAMILIES), "minItems": 1, "uniqueItems": True}),
    )
    extra_features: tuple[str, ...] = declare(
        "Features that installed packages declare (include/extensions.py), appended to the "
        "default feature spec.",
        default=(), members=feature_names, form=FormField(DATA, "Plug-in features (installed packages)",
                                                          {"uniqueItems": True}),
    )
    cv_folds: int = declare(
        "Walk-forward folds; each test fold is one data interval (one week) long.", default=6, interval=Interval(2, 52),
        form=FormField(CV, "Walk-forward folds")
    )
    cv_scheme: Literal["expanding", "rolling"] = declare(
        "Walk-forward training windows: 'rolling' (the last cv_rolling_train_days before each "
        "test week, the same rows in every weekly run, so earlier runs' fits are reused) or "
        "'expanding' (every earlier row of the window).",
        default="rolling", form=FormField(CV, "Walk-forward scheme"),
    )
    cv_rolling_train_days: int = declare(
        "Training-window length of each fold and of the deployed model, in days, for the rolling "
        "scheme; 0: train_window_days less one week per fold and one more week (681 days for "
        "the defaults), so the earliest fold trains on about as much history as it would "
        "expanding.",
        default=0, interval=Interval(0, MAX_DAYS),
    )
    cv_embargo_bars: int = declare(
        "Rows kept out of training next to every test window, beyond the label-horizon purge.",
        default=24, interval=Interval(0, 1000), form=FormField(CV, "Embargo (bars)"),
    )
    early_stopping_rounds: int = declare(
        "Boosting rounds without improvement on the inner validation split before LightGBM and "
        "XGBoost stop (0 disables early stopping).",
        default=50, interval=Interval(0, 10_000),
    )
    ensemble_weighting: Literal["fixed", "selected", "fitted", "stacking"] = declare(
        "'fixed': ensemble_weights as given; 'selected': ensemble_weights or the logistic family "
        "alone, whichever has the lower out-of-fold log loss; 'fitted': weights minimising "
        "out-of-fold log loss; 'stacking': a logistic regression on the members' out-of-fold "
        "log-probabilities.",
        default="selected", form=FormField(ENSEMBLE, "Weighting"),
    )
    calibration: Literal["none", "ensemble", "members_and_ensemble"] = declare(
        "Temperature scaling (Guo et al. 2017) fitted on purged out-of-fold rows, each fold's "
        "by earlier folds only and the registered model's by all: 'ensemble' scales the combined "
        "probabilities; 'members_and_ensemble' also each family's before they are combined; "
        "'none': as combined.",
        default="none", form=FormField(ENSEMBLE, "Calibration"),
    )
    hyperparameters: Literal["tuned", "default"] = declare(
        "'default': the families' defaults; 'tuned': per family, the newest set of "
        "tune_hyperparameters as of the run's first test fold or earlier.", default="default",
        form=FormField(CV, "Hyperparameters"))
    ensemble_weights: dict[str, float] = declare(
        "Soft-voting weights per family for 'fixed' and 'selected' weighting (renormalised over "
        "trained models); a family without one weighs 1 / (number of models).",
        default_factory=lambda: {"lightgbm": 0.25, "xgboost": 0.25, "random_forest": 0.25, "logistic": 0.25},
    )
    gate_alpha: float = declare(
        "Yearly false-promotion rate per registered model: the largest probability that a model "
        "without skill is promoted in any of a year's weekly decisions. Each week's skill tests "
        "(macro F1 against every naive baseline, log loss against the class prior, trading "
        "against flat and momentum) run at gate_alpha / 52 (Bonferroni over the year's decisions).",
        default=0.10, interval=Interval(0, 1, low_open=True, what="a level"),
        form=FormField(GATE, "False-promotion rate per year (each week at 1/52 of it)"),
    )
    gate_min_f1_margin: float = declare(
        "Macro-F1 lead over each naive baseline in the F1 test's alternative hypothesis.",
        default=0.0, interval=Interval(-1.0, 1.0),
        form=FormField(GATE, "Macro-F1 lead over each baseline (H1)"),
    )
    gate_max_log_loss_ratio: float = declare(
        "The log-loss test's alternative: out-of-fold log loss below this multiple of the "
        "class-prior forecast's (1.0 = better than predicting base rates).",
        default=1.0, interval=Interval(0, None, low_open=True, what="a ratio"),
        form=FormField(GATE, "Log loss / class-prior log loss to beat (H1)"),
    )
    gate_min_sharpe_margin: float = declare(
        "Annualised Sharpe ratio (after costs and funding) the probabilistic Sharpe ratio tests "
        "against, for the strategy (flat is 0) and for its return over the momentum rule's.",
        default=0.0, form=FormField(GATE, "Annualised Sharpe to beat, over flat and over momentum"),
    )
    gate_max_drawdown: float = declare(
        "Largest allowed out-of-fold maximum drawdown of the simulated strategy (fraction).",
        default=0.2, interval=Interval(0, 1, low_open=True, what="a fraction"),
        form=FormField(GATE, "Largest drawdown (fraction)"),
    )
    gate_champion_alpha: float = declare(
        "Level at which a champion significantly better than the challenger (paired block-"
        "bootstrap log-loss test on every row where both are out of sample) refuses it: refused "
        "when p < this; 0 never refuses on the comparison (it is still reported).",
        default=0.05, interval=Interval(0, 1, what="a level"),
        form=FormField(GATE, "Level at which a better champion refuses the challenger (0: never)"),
    )
    gate_required_checks: tuple[str, ...] = declare(
        "The skill tests that decide (beats_baselines_f1, beats_prior_log_loss, "
        "beats_trading_baselines); the others are run and recorded, not required.",
        default=("beats_prior_log_loss",), members=lambda: SKILL_CHECKS,
        form=FormField(GATE, "Skill tests that decide", {"uniqueItems": True}),
    )
    gate_demote: bool = declare(
        "Demote a champion to 'no model' (production serves the class-prior forecast and no "
        "position) when its own record, on as many rows as the challenger's and at the same "
        "weekly level, is significantly worse than the class prior's, and the challenger is not "
        "promoted.",
        default=True, form=FormField(GATE, "Demote a champion significantly worse than the class prior to no model"),
    )
    gate_record_weeks: int = declare(
        "Weeks of shadow record in the log-loss test: the walk-forward forecasts that earlier "
        "candidates of the same recipe (promoted or not) recorded in this many weeks before the "
        "candidate's out-of-fold rows join them, so evidence of an edge accumulates week by week; "
        "0 tests the candidate's own out-of-fold rows only.",
        default=20, interval=Interval(0, 520),
        form=FormField(GATE, "Weeks of earlier candidates' forecasts in the log-loss test"),
    )
    gate_min_deflated_sharpe: float | None = declare(
        "Smallest deflated Sharpe ratio of the out-of-fold strategy (Bailey & López de Prado 2014: "
        "the probability that its true Sharpe exceeds the expected maximum of every candidate "
        "evaluated for the model); null leaves the check out (the value is still recorded). "
        "0.95 is the paper's level.",
        default=None, interval=Interval(0, 1, what="a probability"),
        form=FormField(GATE, "Smallest deflated Sharpe ratio (empty: off)"),
    )
    trade_min_probability: float = declare(
        "A position's side must have at least this probability too (up for a long, down for a "
        "short); 0: the expected move net of the round trip and funding alone decides "
        "(include/backtest.py, TradingDecision). Versions registered without class moves trade "
        "their decided class when its probability reaches this.",
        default=0.0, interval=Interval(0, 1, high_open=True, what="a probability"),
        form=FormField(TRADING, "Smallest probability of a position's side (0: the cost rule alone)"),
    )
    trade_may_stay_flat: bool = declare(
        "The margin chosen on earlier folds may be 'stay flat': where no margin of the grid (0, 0.5, "
        "1 and 2 round trips) made money after costs on the folds before, the next fold, and the "
        "deployed model when none made money on all folds, takes no position "
        "(include/backtest.py, FLAT_MARGIN); off: the best margin of the grid trades even at a loss.",
        default=True, form=FormField(TRADING, "Stay flat where no margin made money on earlier folds"),
    )
    trade_meta_label: bool = declare(
        "Meta-labeling (López de Prado 2018, 3.6): a logistic regression fitted on earlier folds' "
        "positions, on whether each paid after costs over the horizon, keeps only the positions it "
        "expects to pay; the deployed model's is fitted on every fold and serving applies it "
        "(include/meta_label.py). Off: every position the margin allows is taken.",
        default=False, form=FormField(TRADING, "Meta-label the trading decision's positions"),
    )
    trade_vol_target: bool = declare(
        "Volatility-targeted size without leverage (Moreira & Muir 2017; Harvey et al. 2018): "
        "each position takes min(1, reference / scale) units of notional, scale the label rule's "
        "volatility at the bar and reference its model's median over its training rows, so a "
        "position is cut where the market is more volatile than the model's training period "
        "(include/backtest.py, TradingDecision.sizes). Off: one unit a position.",
        default=False, form=FormField(TRADING, "Size positions by volatility (cut in turbulent bars, never levered)"),
    )
    fee_bps: float = declare("Trading fee per side, basis points of notional.", default=4.0,
                          interval=Interval(0, 10_000), form=FormField(TRADING, "Fee per side (bps)"))
    slippage_bps: float = declare("Slippage per side, basis points of notional.", default=1.0,
                               interval=Interval(0, 10_000), form=FormField(TRADING, "Slippage per side (bps)"))
    require_approval: bool = declare(
        "Ask a human (Airflow's approval task) before promoting a candidate that passed the gate.",
        default=False, form=FormField(GATE, "Ask a person to approve a promotion"),
    )
    approval_timeout_hours: float = declare(
        "With require_approval: hours to wait for a person's answer; without one the promotion is "
        "rejected (production kept) and the run goes on.", default=72.0,
        interval=Interval(0, 8_760, low_open=True, what="a number of hours"),
        form=FormField(GATE, "Hours to wait for the approval (then: rejected)"),
    )
    max_gap_share: float = declare(
        "Largest tolerated share of missing bars in the training window.", default=0.01,
        interval=Interval(0, 1, high_open=True, what="a fraction"),
    )
    max_gap_bars: int = declare("Largest tolerated single gap, in missing bars.", default=24,
                             interval=Interval(0, 100_000))
    min_row_share: float = declare(
        "Minimum rows in the window as a share of the bars the window should hold.", default=0.95,
        interval=Interval(0, 1, low_open=True, what="a fraction"),
    )
    max_abs_funding_rate: float = declare(
        "Largest plausible |funding rate| per settlement, as a fraction (0.03 = 3 %).",
        default=0.03, interval=Interval(0, 1, low_open=True, high_open=True, what="a fraction"),
    )
    funding_interval_hours: int = declare("Funding settlement cadence in hours.", default=8, choices=(1, 2, 4, 8))
    source: Literal["files", "exchange"] = declare(
        "Where ingestion reads market data: 'files' (the bundled data or source_dir; re-reads "
        "the whole window) or 'exchange' (the exchange's REST API through ccxt; fetches only "
        "what the store is missing).",
        default="files", form=FormField(DATA, "Market data source"),
    )
    source_dir: str | None = declare(
        "Directory of market-data files to ingest instead of MARKET_DATA_DIR.", default=None,
        form=FormField(DATA, "Data directory (files source)"),
    )
    as_of_date: str | None = declare(
        "Train on data up to this UTC date (YYYY-MM-DD) instead of the run's data interval: a "
        "Sunday gives the week ending then, another day the days since the last Sunday (as a "
        "retrain monitoring requests); used by runs triggered without a logical date.",
        default=None, form=FormField(DATA, "As-of date (runs without a data interval)", {"format": "date"}),
    )
    random_state: int = declare("Seed of every random number generator in training.", default=42,
                             interval=Interval(0, 2**32 - 1))  # numpy's seed range
    min_history_days: int = declare(
        "A market whose stored history is shorter than train_window_days (a recent listing) "
        "trains on what it has when that reaches this many days, and is skipped below it.",
        default=180, interval=Interval(14, MAX_DAYS), form=FormField(DATA, "Minimum history (days)"),
    )

    def __post_init__(self) -> None:
        self.check_declared()
        if not re.fullmatch(r"[A-Za-z0-9]{2,32}", self.symbol or ""):
            self.fail("symbol", "expected 2-32 ASCII letters and digits, e.g. BTCUSDT")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_]{0,31}", (self.exchange or "").lower()):
            self.fail("exchange", "expected a ccxt exchange id: ASCII letters, digits and '_', e.g. binance")
        if not self.models:
            self.fail("models", "expected at least one model family")
        if self.cv_rolling_train_days != 0 and self.cv_rolling_train_days < 14:
            self.fail("cv_rolling_train_days", "expected 0 (derived) or at least 14 days")
        if self.cv_scheme == "rolling" and self.rolling_train_days < 14:
            self.fail("cv_rolling_train_days", f"train_window_days={self.train_window_days} less "
                       f"{self.cv_folds + 1} week(s) leaves {self.rolling_train_days} days to train each fold on; "
                       "lengthen train_window_days, lower cv_folds or set cv_rolling_train_days")
        if self.extra_features:
            builtin = set().union(*KNOWN_FEATURES.values()) | {"close", "volume"}
            if set(self.extra_features) & builtin:
                self.fail("extra_features", f"{sorted(set(self.extra_features) & builtin)} name built-in "
                           "features: a plug-in feature needs a name of its own")
        weights = self.member_weights(self.models)
        if any(w < 0 for w in self.ensemble_weights.values()) or sum(weights.values()) <= 0:
            self.fail("ensemble_weights", "expected non-negative weights with a positive sum over models")

    @property
    def registered_model(self) -> RegisteredModel:
        """The registered model (a market's identity) this run trains a version of."""
        return RegisteredModel(self.exchange.lower(), self.symbol.upper(), self.market_type, self.timeframe,
                               self.label_horizon_bars, self.label_threshold_mode, float(self.label_threshold),
                               self.label_vol_window_bars)

    @property
    def market(self) -> Market:
        """The market this run trains on."""
        return Market(self.exchange, self.symbol, self.market_type, self.timeframe)

    @property
    def model_name(self) -> str:
        """Name of the registered model this run trains a version of, e.g. ``binance-btcusdt-perp-1h-h4``."""
        return self.registered_model.name

    @property
    def bar_seconds(self) -> int:
        """Length of one bar in seconds."""
        return TIMEFRAME_SECONDS[self.timeframe]

    @property
    def rolling_train_days(self) -> int:
        """Days each fold trains on under the rolling scheme (``cv_rolling_train_days`` or derived)."""
        return self.cv_rolling_train_days or self.train_window_days - 7 * (self.cv_folds + 1)

    def member_weights(self, families: Any) -> dict[str, float]:
        """The 'fixed' soft-voting weight of each of ``families``, before renormalising: its
        ``ensemble_weights`` entry, or ``1 / len(models)`` for a family without one."""
        return {f: float(self.ensemble_weights.get(f, 1.0 / len(self.models))) for f in families}


#: Run parameters that do not shape the model (decision, trading, where the rows came from): left
#: out of a version's identity, so a re-run with another gate policy is the same version.
NOT_MODEL_INPUTS = ("gate_", "trade_", "fee_bps", "slippage_bps", "require_approval", "approval_timeout_hours",
                    "as_of_date", "source", "min_history_days")


@dataclass(frozen=True)
class TuningConfig(Declared):
    """Parameters of a tuning run (``tune_hyperparameters``, ``python -m include.tuning run``);
    the market's other parameters are a :class:`RunConfig`'s.

    Raises:
        ConfigError: from ``__post_init__``, a refused value, naming the field.
    """

    tune_trials: int = declare(
        "Finished (complete or pruned) trials each study holds when the run ends; a re-run for the same "
        "as-of date resumes the study.", default=20, interval=Interval(1, 1000),
        form=FormField(TUNING, "Trials per family"))
    tune_timeout_minutes: float | None = declare(
        "Stop starting trials of a family after this long (empty: none).", default=None,
        interval=Interval(0, None, low_open=True, what="a number of minutes"),
        form=FormField(TUNING, "Time budget (minutes)"))
    tune_folds: int = declare(
        "Weekly test folds each trial is scored on (even: the overfitting measure splits them in halves).",
        default=8, interval=Interval(2, 52), form=FormField(TUNING, "Walk-forward folds"))
    tune_search_space: dict[str, Any] | None = declare(
        "{family: {hyperparameter: {type, low, high, log} or {type: categorical, choices}}} merged over "
        "include/tuning/spaces.py.", default=None, form=FormField(TUNING, "Search space overrides"))

    def __post_init__(self) -> None:
        self.check_declared()


@dataclass(frozen=True)
class MonitorPolicy(Declared):
    """When monitoring (``monitor_production``) alerts and asks for a retrain.

    The fields with a form title are ``monitor_production``'s params, as ``monitor_<field>``.

    Raises:
        ConfigError: from ``__post_init__``, a refused value, naming the field.
    """

    PARAM_PREFIX = "monitor_"

    max_psi: float = declare(
        "Population stability index above this on a top feature is drift (0.25: the customary \"major shift\").",
        default=0.25, interval=Interval(0, None), form=FormField(POLICY, "Largest PSI on a top feature"))
    psi_top_k: int = declare(
        "How many of the version's most important features the PSI check covers.", default=5,
        interval=Interval(1, None), form=FormField(POLICY, "Top features checked for drift"))
    max_missing_increase: float = declare(
        "Missing share above the training share by more than this (e.g. open interest that stops arriving).",
        default=0.2, interval=Interval(0, 1), form=FormField(POLICY, "Largest rise in a feature's missing share"))
    log_loss_days: int = declare(
        "Consecutive complete days on which the realised log loss is worse than the class-prior forecast's.",
        default=3, interval=Interval(1, None), form=FormField(POLICY, "Days of log loss worse than the prior"))
    max_drawdown: float = declare(
        "Of the live simulated strategy (fraction).", default=0.15,
        interval=Interval(0, 1, low_open=True, what="a fraction"), form=FormField(POLICY, "Largest live drawdown"))
    max_data_age_hours: float = declare(
        "Older than this at the end of the span is stale data.", default=3.0,
        interval=Interval(0, None, low_open=True, what="a number of hours"),
        form=FormField(POLICY, "Largest age of the last bar (hours)"))
    min_labelled_rows: int = declare(
        "Fewer realised labels than this: performance checks wait.", default=24, interval=Interval(1, None))
    min_drift_rows: int = declare(
        "Fewer live rows in the drift window than this: drift checks wait (PSI over ten bins is noise on a "
        "few dozen rows).", default=72, interval=Interval(1, None))
    drift_window_days: int = declare(
        "Days of the most recent bars the drift checks use.", default=7, interval=Interval(1, None))
    cooldown_hours: float = declare(
        "Hours of data time after a retrain request during which the model gets no other, so that one "
        "incident gives one retrain.", default=72.0, interval=Interval(0, None),
        form=FormField(POLICY, "Cooldown between retrain requests (hours)"))

    def __post_init__(self) -> None:
        self.check_declared()

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> MonitorPolicy:
        """The policy of a run's params (keys ``monitor_<field>``; missing or None = default).

        Raises:
            ConfigError: a refused value, naming the field.
        """
        return super().from_params({f.name: params.get(f"monitor_{f.name}") for f in fields(cls)})


def params_markdown() -> str:
    """The run-parameter reference page (``docs/reference/params.md``): every :class:`RunConfig`
    and :class:`TuningConfig` field with its default, the values it accepts, where the trigger
    form shows it, and its description, all read from the field's declaration."""
    return "\n".join([
        "# Run parameters", "",
        "Every field of `RunConfig` (`include/config.py`) is a run parameter of `weekly_retrain`: a field",
        "of the trigger form (in the section given), a key of `--conf`, or a market's own value in the",
        "universe file. This page is generated from the fields' declarations.", "",
        *_parameter_table(RunConfig, "(--conf, universe file)"), "",
        "## Tuning", "",
        "`tune_hyperparameters` takes these besides the market's `RunConfig` fields (`TuningConfig`;",
        "`python -m include.tuning run` takes the same defaults).", "",
        *_parameter_table(TuningConfig, "(--conf)")]) + "\n"


def _parameter_table(owner: type[Declared], unshown: str) -> list[str]:
    """The Markdown table of ``owner``'s fields; ``unshown``: the section column of a field the
    trigger form leaves out."""
    defaults = owner()
    lines = ["| Parameter | Default | Accepts | Form section | Description |", "| --- | --- | --- | --- | --- |"]
    for f in fields(owner):
        default = getattr(defaults, f.name)
        default = list(default) if isinstance(default, tuple) else default
        section = f.metadata["form"].section if "form" in f.metadata else unshown
        lines.append(f"| `{f.name}` | `{default}` | {accepts(owner, f)} | {section} | "
                     f"{f.metadata['description'].replace('|', '/')} |")
    return lines

"""Serving the production model: one loader for everything that predicts.

:class:`ProductionModel` serves one registered model: it loads the version that model's
``production`` alias points at (unpickling only bytes whose sha256 matches the registry), keeps
it in memory, and reloads it when the alias moves; it
looks the alias up at most every ``refresh_seconds``. When the alias moves to a version that
fails verification, production keeps serving the last good model: the version already loaded
answers every call, each answer naming the refused version and why (``refused``), until the
alias moves again or the artifact verifies. A staleness guard compares the model's
training-data end with now, in the manner of FreqAI's ``expiration_hours``: past
``max_age_hours`` it warns (``on_stale="warn"``, the prediction says ``stale``) or refuses
(``"refuse"``). A second guard concerns the market data: a forecast is for the bars after the
last complete bar, so when the store's newest bar is more than ``max_data_lag_bars`` behind the
last bar that had closed by ``as_of`` (ingestion stopped), the prediction is refused with where
the data ends and how old it is; every prediction says how old its bar is (``data_age_hours``).

:meth:`ProductionModel.predict` computes the features of the latest bars from the market store
with the model's own feature spec (the one stored in its lineage) and returns the class
probabilities (down / range / up) of the last complete bar, with the version that produced them.
:func:`production_model` gives the process-wide instance of a registered model for a deployment
(the API plugin uses it; the post-promotion smoke test builds its own). A model the gate demoted
to no model answers with the class-prior forecast (the demoted version's training class
frequencies), ``version`` ``"none"``, ``decision`` ``"no position"`` and ``no_model`` saying
since when and why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from include.backtest import TradingDecision, positions_from_proba, standardised_moves
from include.config import TIMEFRAME_SECONDS, RunConfig
from include.data.store import MarketStore
from include.errors import RegistryError, ServingError
from include.feature_store import feature_frame
from include.features import FeatureSpec, complete_rows
from include.gate import instant
from include.labels import CLASS_NAMES
from include.paths import check_name
from include.predictions import log_predictions
from include.registry import ModelRegistry
from include.storage import read_bytes, write_bytes
from include.trading import deployed_decision
from include.training import prior_corrected_predict
from include.windows import closed_bars_end

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One prediction.

    Attributes:
        model: registered model name.
        version: registry version that produced it.
        symbol: instrument.
        bar: open time (ISO, UTC) of the bar whose features were used; the forecast is for the
            ``label_horizon_bars`` after its close.
        probabilities: class name -> probability (down, range, up); they sum to 1.
        decision: the prior-corrected most likely class.
        horizon_bars: forecast horizon in bars.
        model_age_hours: hours from the end of the model's training data to now.
        stale: older than the configured maximum age.
        data_age_hours: hours from the close of the bar used to ``as_of`` (0 to 1 bar when
            ingestion is up to date).
        refused: the version the production alias points at, when it is not ``version``
            because it failed verification: ``{"version": …, "error": …}``; ``None`` when the
            answer comes from the alias's own version.
        no_model: set while the gate has demoted the model to no model (``{"since", "demoted",
            "reason"}``): the probabilities are then the demoted version's training class
            frequencies (the class-prior forecast), ``version`` is ``"none"`` and ``decision``
            is ``"no position"``.
        position: the trading decision for the next bar in units of notional, -1 (short), 0
            (flat) or +1 (long), or with ``trade_vol_target`` a side sized in [-1, 1]: the
            cost-aware rule of :class:`include.backtest.TradingDecision` at the margin (or
            "flat"), with the meta-label model the gate's trading step chose for this version and
            its volatility-scale reference (:func:`include.trading.deployed_decision`), as the
            trading simulation traded it; 0 without a model.
        expected_move: the forecast's expected log return over the horizon (``None`` for a
            version registered without class moves, which trades by its decided class).
    """

    model: str
    version: str
    symbol: str
    bar: str
    probabilities: dict[str, float]
    decision: str
    horizon_bars: int
    model_age_hours: float
    stale: bool
    data_age_hours: float = 0.0
    refused: dict[str, str] | None = None
    no_model: dict[str, str] | None = None
    position: int | float = 0
    expected_move: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        return asdict(self)


class ProductionModel:
    """The production version of one registered model, loaded once and reloaded when the alias moves.

    When the alias moves to a version whose artifact fails verification (a modified or missing
    file), the loader keeps serving the version it has loaded, on every call, and says so: each
    prediction carries ``refused`` (the alias's version and the error), and the refusal is logged
    as an error once per version and error. This is the project's rule that production keeps
    serving the last good model (a failed promotion's smoke test rolls back; the gate keeps the
    champion): a refused artifact is never unpickled, and an answer from the last verified version
    is better than none, as long as it says whose it is. The alias is looked up again every
    ``refresh_seconds``, so a repaired artifact or another move is served from then on. A loader
    that has no verified version yet (a new process, or the post-promotion smoke test, which
    builds its own) has nothing good to serve: it raises the verification error on every call.

    Args:
        registry: the model registry.
        market_db_url: the market store, for the features of the latest bars.
        model: registered model name, e.g. ``binance-btcusdt-perp-1h-h4``.
        max_age_hours: staleness limit (``None``: no limit).
        on_stale: ``warn`` or ``refuse`` past the limit.
        refresh_seconds: how often to look the alias up again.
        max_data_lag_bars: most bars the newest stored bar may lag behind the last bar closed
            by ``as_of`` (``None``: no limit); past it :meth:`predict` refuses.
    """

    def __init__(self, registry: ModelRegistry, market_db_url: str, model: str, *,
                 max_age_hours: float | None = 192.0, on_stale: Literal["warn", "refuse"] = "warn",
                 refresh_seconds: float = 5.0, max_data_lag_bars: int | None = 1) -> None:
        self.registry = registry
        self.max_data_lag_bars = max_data_lag_bars
        self.market_db_url = market_db_url
        self.model_name = model
        self.max_age_hours = max_age_hours
        self.on_stale = on_stale
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._version: str | None = None
        self._model: Any = None
        self._lineage: dict[str, Any] = {}
        self._checked = 0.0
        self._store = None
        self._fast: FastPredictor | None = None
        self._refused: dict[str, str] | None = None
        self._no_model: dict[str, Any] | None = None
        self._prior: tuple[str, np.ndarray, dict[str, Any]] | None = None
        self._decision: tuple[str, TradingDecision] | None = None
        self.loads = 0
        #: The feature row ``(1, n_features)`` the last prediction was made from, indexed by its bar.
        self.last_features: pd.DataFrame | None = None

    def current(self) -> tuple[str, Any, dict[str, Any]]:
        """``(version, model, lineage)`` of production, reloading if the alias moved.

        The version is the last verified one while the alias points at one that fails
        verification (see the class).

        Raises:
            ServingError: the registered model has no production version (:class:`NoModel`
                when the gate demoted it to no model).
            RegistryError: the production artifact fails its sha256 check and no verified
                version is loaded.
        """
        return self._current()[:3]

    def _current(self) -> tuple[str, Any, dict[str, Any], dict[str, str] | None]:
        """:meth:`current` and, read under the same lock, the refused alias version (or ``None``)."""
        with self._lock:
            now = time.monotonic()
            if self._version is None and self._no_model is not None and now - self._checked < self.refresh_seconds:
                raise NoModel(self._no_model)
            if self._version is None or now - self._checked >= self.refresh_seconds:
                pointer = self.registry.production(self.model_name)
                self._checked = now
                if pointer is None:
                    self._version, self._refused = None, None
                    self._no_model = self.registry.no_model_since(self.model_name)
                    if self._no_model is None:
                        raise ServingError(f"{self.model_name} has no production version (never promoted, or "
                                           "its alias was removed after a failed promotion)")
                    raise NoModel(self._no_model)
                self._no_model = None
                if pointer.version == self._version:
                    self._refused = None
                else:
                    try:
                        model, lineage = self.registry.load(pointer.version)
                    except RegistryError as exc:
                        if self._version is None:
                            raise
                        refused = {"version": pointer.version, "error": str(exc)}
                        if refused != self._refused:
                            logger.error("%s: production moved to %s, which fails verification (%s); serving "
                                         "the last verified version %s", self.model_name, pointer.version, exc,
                                         self._version)
                        self._refused = refused
                        return self._version, self._model, self._lineage, self._refused
                    self._refused = None
                    for _, est in getattr(model, "estimators_", []):
                        # One-row predictions: thread pools cost more than they save.
                        if "n_jobs" in est.get_params():
                            est.set_params(n_jobs=1)
                    self._version, self._model, self._lineage = pointer.version, model, lineage
                    self._fast = None  # rebuilt, and checked, on the first prediction
                    self.loads += 1
                    logger.info("serving %s production version %s", self.model_name, pointer.version)
            return self._version, self._model, self._lineage, self._refused

    def age_hours(self, lineage: dict[str, Any], now: datetime | None = None) -> float:
        """Hours from the end of the model's training data to ``now``."""
        trained_until = pd.Timestamp(lineage["data_window"]["trained_until"])
        return (pd.Timestamp(now or datetime.now(UTC)) - trained_until).total_seconds() / 3600

    def _check_age(self, version: str, lineage: dict[str, Any], now: datetime | None) -> tuple[float, bool]:
        age = self.age_hours(lineage, now)
        stale = self.max_age_hours is not None and age > self.max_age_hours
        if stale:
            message = (f"production model {version} is {age:.0f} h old (trained until "
                       f"{lineage['data_window']['trained_until']}), over the {self.max_age_hours:.0f} h limit")
            if self.on_stale == "refuse":
                raise ServingError(message + "; refusing to serve")
            logger.warning(message)
        return age, stale

    def predict_row(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, 3)`` for ready feature rows in the model's column order.

        Uses the checked native path built by the first :meth:`predict`.

        Raises:
            ServingError: :meth:`predict` has not run since the model was (re)loaded.
        """
        if self._fast is None:
            raise ServingError("predict_row needs one predict() first (it builds the checked fast path)")
        return self._fast.predict_proba(X)

    def predict(self, as_of: datetime | None = None, *, log_as: str | None = None) -> Prediction:
        """Forecast from the last complete bar before ``as_of`` (default: now).

        Args:
            as_of: UTC time; bars that closed by then are used.
            log_as: write the prediction to the prediction log with this source (``api``,
                ``smoke_test``); ``None`` writes nothing. The first prediction of a bar by a
                version is the one kept.

        Returns:
            The prediction; while the alias points at a version that fails verification, the
            last verified version's, with ``refused`` naming the alias's version and the error.

        Raises:
            ServingError: no production version, a stale model under ``refuse``, no complete
                feature row in the store before ``as_of``, or the newest one lags ``as_of`` by
                more than ``max_data_lag_bars``.
            RegistryError: the production artifact fails verification and no verified version
                is loaded.
        """
        ts = pd.Timestamp(as_of or datetime.now(UTC))
        as_of = (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()
        try:
            version, model, lineage, refused = self._current()
        except NoModel as state:
            return self._prior_forecast(state.since, as_of, log_as)
        age, stale = self._check_age(version, lineage, as_of)
        spec = FeatureSpec.from_dict({k: v for k, v in lineage["feature_spec"].items() if k != "sha256"})
        bar = timedelta(seconds=TIMEFRAME_SECONDS[lineage["timeframe"]])
        market, ready = self._ready_features(lineage, spec, as_of, bar)
        row = ready.iloc[[-1]]
        self.last_features = row
        data_age = self._check_data_lag(lineage, row.index[0], as_of, bar)
        if self._fast is None or self._fast.model is not model:
            self._fast = FastPredictor(model, ready.tail(64))
        proba = self._fast.predict_proba(row.to_numpy(dtype="float64"))[0]
        decided = int(prior_corrected_predict(proba[None, :], model.class_prior_)[0])
        position, expected = self._position(version, lineage, model, row, proba, market, bar)
        prediction = Prediction(model=self.model_name, version=version, symbol=lineage["symbol"],
                                bar=row.index[0].isoformat(),
                                probabilities=dict(zip(CLASS_NAMES, map(float, proba), strict=True)),
                                decision=CLASS_NAMES[decided],
                                horizon_bars=int(lineage["config"]["label_horizon_bars"]),
                                model_age_hours=round(age, 2), stale=stale, data_age_hours=round(data_age, 2),
                                refused=refused, position=position, expected_move=expected)
        if log_as is not None:
            log_predictions(self._store.engine, self.model_name, version,
                            [{"bar": row.index[0], "decision": prediction.decision,
                              **{f"p_{k}": v for k, v in prediction.probabilities.items()}}], source=log_as)
        return prediction

    def _ready_features(self, lineage: dict[str, Any], spec: FeatureSpec, as_of: datetime,
                        bar: timedelta) -> tuple[RunConfig, pd.DataFrame]:
        """``(market, ready)``: the version's market, and the complete feature rows of its last 72 bars by ``as_of``.

        Raises:
            ServingError: no candle in the market store in the 72 bars before ``as_of``, or no
                complete feature row among them.
        """
        start = as_of - bar * 72
        if self._store is None:
            self._store = MarketStore(self.market_db_url)
        market = RunConfig(exchange=lineage["exchange"], symbol=lineage["symbol"],
                           market_type=lineage["market_type"], timeframe=lineage["timeframe"],
                           extra_features=tuple(lineage["config"].get("extra_features") or ()))
        # The bar in progress at as_of is not complete: use bars that closed by then. The features
        # are training's own for each bar (feature_frame computes them the same way everywhere).
        feats = feature_frame(self._store, market, spec, start, closed_bars_end(as_of, bar))[list(spec.names)]
        if feats.empty:
            extent = self._store.extent("ohlcv", exchange=market.exchange, symbol=market.symbol,
                                        market_type=market.market_type, timeframe=market.timeframe, end=as_of)
            ends = (f"the newest stored candle closed at {(extent[1] + bar).isoformat()}, "
                    f"{(pd.Timestamp(as_of) - extent[1] - bar) / pd.Timedelta(hours=1):.1f} h before "
                    f"{as_of.isoformat()}" if extent else "the store holds none before it")
            raise ServingError(f"no {lineage['symbol']} candles in the market store in [{start.isoformat()}, "
                               f"{as_of.isoformat()}): {ends}; is ingestion up to date?")
        ready = feats[complete_rows(feats, spec.names)]
        if ready.empty:
            raise ServingError(f"no complete feature row for {lineage['symbol']} before {as_of.isoformat()}")
        return market, ready

    def _check_data_lag(self, lineage: dict[str, Any], bar_open: pd.Timestamp, as_of: datetime,
                        bar: timedelta) -> float:
        """Hours from the close of the bar opening at ``bar_open`` to ``as_of``.

        Raises:
            ServingError: that bar closed more than ``max_data_lag_bars`` bars before ``as_of``.
        """
        bar_close = bar_open + bar
        data_age = (pd.Timestamp(as_of) - bar_close) / pd.Timedelta(hours=1)
        lag_bars = int((pd.Timestamp(as_of) - bar_close) // bar)
        if self.max_data_lag_bars is not None and lag_bars > self.max_data_lag_bars:
            raise ServingError(
                f"{self.model_name}: the newest complete {lineage['symbol']} bar with features closed at "
                f"{bar_close.isoformat()}, {data_age:.1f} h ({lag_bars} bars) before {as_of.isoformat()}; "
                f"at most {self.max_data_lag_bars} bar(s) of lag are allowed: refusing to forecast from stale data "
                "(is ingestion up to date?)")
        return data_age

    def _position(self, version: str, lineage: dict[str, Any], model: Any, row: pd.DataFrame, proba: np.ndarray,
                  market: Any, bar: timedelta) -> tuple[int, float | None]:
        """The trading decision for ``row``'s forecast: ``(position, expected move)``.

        The version's class moves come from its lineage, the margin and meta-label model from its
        gate decision (:func:`include.trading.deployed_decision`), the volatility
        scale from the stored candles up to the row's bar (the label rule's window), the funding
        rate from the row's features. A version registered without class moves trades its
        decided class (:func:`include.backtest.positions_from_proba`).
        """
        config = lineage["config"]
        if self._decision is None or self._decision[0] != version:
            self._decision = (version, deployed_decision(config, self.registry.decision_of(self.model_name, version),
                                                         lineage.get("trading")))
        decision = self._decision[1]
        moves = (lineage.get("trading") or {}).get("class_moves")
        if not moves:
            return int(positions_from_proba(proba[None, :], model.class_prior_, decision.min_probability)[0]), None
        window = int(config["label_vol_window_bars"])
        candles = self._store.load_ohlcv(exchange=market.exchange, symbol=market.symbol,
                                         market_type=market.market_type, timeframe=market.timeframe,
                                         start=(row.index[0] - bar * (window + 8)).to_pydatetime(),
                                         end=(row.index[0] + bar).to_pydatetime())
        closes = candles.set_index("timestamp")["close"].astype("float64")
        scale, _ = standardised_moves(closes, horizon=decision.horizon_bars, vol_window=window)
        scale_now = np.array([scale.get(row.index[0], np.nan)], dtype="float64")
        funding = row["funding_rate"].to_numpy(dtype="float64") if "funding_rate" in row else None
        expected = float(decision.expected_move(proba[None, :], np.asarray(moves), scale_now)[0])
        return plain_position(decision.positions(proba[None, :], np.asarray(moves), scale_now, funding)[0]), expected

    def _prior_forecast(self, since: dict[str, Any], as_of: datetime, log_as: str | None) -> Prediction:
        """The no-model answer: the demoted version's training class frequencies for the last bar
        closed by ``as_of``, and no position."""
        demoted = since["from"]
        if self._prior is None or self._prior[0] != demoted:
            # The demoted version's own record of its training class frequencies: verified, as any load.
            model, lineage = self.registry.load(demoted)
            self._prior = (demoted, np.asarray(model.class_prior_, dtype="float64"), lineage)
        _, prior, lineage = self._prior
        bar = timedelta(seconds=TIMEFRAME_SECONDS[lineage["timeframe"]])
        last = closed_bars_end(as_of, bar) - bar
        prediction = Prediction(model=self.model_name, version="none", symbol=lineage["symbol"],
                                bar=pd.Timestamp(last).isoformat(),
                                probabilities=dict(zip(CLASS_NAMES, map(float, prior), strict=True)),
                                decision="no position", horizon_bars=int(lineage["config"]["label_horizon_bars"]),
                                model_age_hours=0.0, stale=False,
                                no_model={"since": since["at"], "demoted": demoted, "reason": since["reason"]})
        if log_as is not None:
            if self._store is None:
                self._store = MarketStore(self.market_db_url)
            log_predictions(self._store.engine, self.model_name, "none",
                            [{"bar": pd.Timestamp(last), "decision": "no position",
                              **{f"p_{k}": v for k, v in prediction.probabilities.items()}}], source=log_as)
        return prediction


class NoModel(ServingError):  # noqa: N818 - a state, named as the pages name it
    """The registered model is demoted to no model: the gate took production away
    (:meth:`~include.registry.ModelRegistry.demote`). ``since`` is the ledger entry."""

    def __init__(self, since: dict[str, Any]) -> None:
        super().__init__(f"demoted to no model at {since['at']}: {since['reason']}")
        self.since = since


def _native_member(est: Any) -> Any | None:
    """A ``numpy (n, k) -> (n, 3)`` probability function on the member's own native predictor.

    scikit-learn's ``predict_proba`` wrappers spend milliseconds per call on input checks and,
    for forests, dispatching one job per tree; for one row that is most of the cost. These call
    the libraries' own prediction routines directly: LightGBM ``Booster.predict``, XGBoost
    ``Booster.inplace_predict``, the fitted trees' ``tree_.predict`` (averaged as
    ``RandomForestClassifier.predict_proba`` does) and the logistic family's fitted statistics and
    coefficients (:func:`_native_linear`). Returns ``None`` for other estimators.
    """
    kind = type(est).__name__
    if kind == "LGBMClassifier":
        booster = est.booster_
        return lambda X: booster.predict(X)
    if kind == "XGBClassifier":
        booster = est.get_booster()
        return lambda X: booster.inplace_predict(X)
    if kind == "RandomForestClassifier":
        trees = [t.tree_ for t in est.estimators_]
        n_classes = int(est.n_classes_)

        def forest(X: np.ndarray) -> np.ndarray:
            X32 = np.ascontiguousarray(X, dtype=np.float32)
            total = np.zeros((X32.shape[0], n_classes))
            for tree in trees:
                value = tree.predict(X32)[:, :n_classes]
                total += value / value.sum(axis=1, keepdims=True)
            return total / len(trees)

        return forest
    if kind == "Pipeline" and [name for name, _ in est.steps] == ["impute", "scale", "model"]:
        return _native_linear(*(step for _, step in est.steps))
    return None


def _native_linear(impute: Any, scale: Any, model: Any) -> Any:
    """The logistic family's pipeline (:mod:`include.training.logistic`) as numpy: median fill,
    standardisation, then the multinomial softmax of ``X @ coef_.T + intercept_``."""
    fill, mean, sd = impute.statistics_, scale.mean_, scale.scale_
    coef, intercept = model.coef_, model.intercept_

    def linear(X: np.ndarray) -> np.ndarray:
        z = ((np.where(np.isnan(X), fill, X) - mean) / sd) @ coef.T + intercept
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return linear


class FastPredictor:
    """One-row-fast ``predict_proba`` of a fitted ensemble, on numpy arrays: the members' native
    predictors, combined by the ensemble's own ``combine`` (weighted mean or stacker).

    Built at load time and checked against the ensemble's own ``predict_proba`` on probe rows;
    if any member has no native path or any probe differs (``atol=1e-9``), every call falls back
    to the ensemble's ``predict_proba``.

    Args:
        model: a fitted :class:`~include.ensemble.WeightedSoftVotingEnsemble`.
        probe: a few representative feature rows ``(n, k)`` in the model's column order.
    """

    def __init__(self, model: Any, probe: pd.DataFrame) -> None:
        self.model = model
        self.columns = list(probe.columns)
        members = [(_native_member(est), est) for _, est in model.estimators_]
        self.members = members
        self.native = all(fn is not None and list(est.classes_) == [0, 1, 2] for fn, est in members)
        if self.native:
            fast, slow = self._native(probe.to_numpy(dtype="float64")), model.predict_proba(probe)
            self.native = bool(np.allclose(fast, slow, atol=1e-9))
            if not self.native:
                logger.warning("native ensemble path differs from predict_proba; using predict_proba")

    def _native(self, X: np.ndarray) -> np.ndarray:
        # Rows renormalised in float64 as include.training.predict_proba_all does (XGBoost's are float32).
        probas = (np.asarray(fn(X), dtype="float64") for fn, _ in self.members)
        return self.model.combine([p / p.sum(axis=1, keepdims=True) for p in probas])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, 3)`` for rows ``X`` ``(n, k)`` in :attr:`columns` order."""
        if self.native:
            return self._native(np.asarray(X, dtype="float64"))
        return self.model.predict_proba(pd.DataFrame(X, columns=self.columns))


_registries: dict[tuple[str, str], ModelRegistry] = {}
_instances: dict[tuple[str, str, str], ProductionModel] = {}
_instances_lock = threading.Lock()


def deployment_registry(settings: Any) -> ModelRegistry:
    """The process-wide :class:`~include.registry.ModelRegistry` of a deployment (one engine)."""
    key = (str(settings.registry_dir), settings.market_db_url)
    with _instances_lock:
        if key not in _registries:
            _registries[key] = ModelRegistry.from_settings(settings)
        return _registries[key]


def production_model(settings: Any, model: str) -> ProductionModel:
    """The process-wide :class:`ProductionModel` of registered model ``model`` in a deployment.

    Limits come from ``MODEL_MAX_AGE_HOURS`` (default 192: a weekly model plus a day's slack;
    ``none`` for no limit), ``MODEL_STALE_POLICY`` (``warn`` or ``refuse``; default ``warn``) and
    ``MODEL_MAX_DATA_LAG_BARS`` (default 1: ingestion may be one bar behind; ``none`` for no limit).

    Raises:
        RegistryError: no such registered model.
        ServingError: ``MODEL_STALE_POLICY`` is not ``warn`` or ``refuse``.
    """
    registry = deployment_registry(settings)
    key = (str(settings.registry_dir), settings.market_db_url, model)
    with _instances_lock:
        if key not in _instances:
            registry.model(model)  # an unknown name fails here, once, not on every prediction
            raw_age = os.environ.get("MODEL_MAX_AGE_HOURS", "192")
            raw_lag = os.environ.get("MODEL_MAX_DATA_LAG_BARS", "1")
            policy = os.environ.get("MODEL_STALE_POLICY", "warn")
            if policy not in ("warn", "refuse"):
                raise ServingError(f"MODEL_STALE_POLICY={policy!r}: expected warn or refuse")
            _instances[key] = ProductionModel(
                registry, settings.market_db_url, model,
                max_age_hours=None if raw_age.lower() == "none" else float(raw_age), on_stale=policy,
                max_data_lag_bars=None if raw_lag.lower() == "none" else int(raw_lag))
        return _instances[key]


def plain_position(position: Any) -> int | float:
    """A position as a JSON number: an int for a whole unit (a side), a float rounded to 6
    decimals for a sized one."""
    value = float(position)
    return int(value) if value.is_integer() else round(value, 6)


def write_signal(settings: Any, model: str, event: dict[str, Any] | None = None) -> dict[str, Any]:
    """Forecast with ``model``'s production version and append the probabilities to its signal file.

    What a downstream consumer of a promotion does (``dags/publish_signals.py``): the forecast is
    made from the bars that closed by the end of the production version's training data, and
    appended as one row (``bar``, ``version``, ``p_down``, ``p_range``, ``p_up``, ``decision``,
    ``position``, ``event``, ``event_version``) to ``<runs_dir>/signals/<model>.csv``, rewritten whole and
    atomically (:func:`include.storage.write_bytes`).

    Args:
        settings: the deployment (:class:`include.config.Settings`).
        model: registered model name.
        event: the production asset event's extra (:func:`include.assets.production_event`).

    Returns:
        The row written.

    Raises:
        ServingError: the model has no production version, or no complete feature row.
    """
    import io

    registry = ModelRegistry.from_settings(settings)
    try:
        pointer = registry.production(model)
        since = registry.no_model_since(model) if pointer is None else None
        if pointer is None and since is None:
            raise ServingError(f"{model} has no production version to publish signals from")
        # A demotion's signal is "no position" from the bars that closed by the demotion.
        as_of = instant(since["at"] if since else registry.metadata(pointer.version)["data_window"]["trained_until"])
    finally:
        registry.dispose()
    serving = ProductionModel(ModelRegistry.from_settings(settings), settings.market_db_url, model, max_age_hours=None)
    try:
        prediction = serving.predict(as_of)
    finally:
        serving.registry.dispose()
    event = event or {}
    row = {"bar": prediction.bar, "version": prediction.version,
           **{f"p_{k}": v for k, v in prediction.probabilities.items()}, "decision": prediction.decision,
           "position": prediction.position, "event": event.get("event"), "event_version": event.get("version")}
    path = settings.runs_dir / "signals" / f"{check_name(model, 'registered model')}.csv"
    frame = (pd.concat([pd.read_csv(io.BytesIO(read_bytes(path))), pd.DataFrame([row])]) if path.is_file()
             else pd.DataFrame([row]))
    write_bytes(path, frame.to_csv(index=False).encode())
    logger.info("%s: signal from %s for the bar %s written to %s", model, prediction.version, prediction.bar, path)
    return row

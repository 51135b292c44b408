"""Great Expectations 1.x suites for market data, defined in code.

Three suites, run with an ephemeral GX context over pandas frames of one training window:

* ``ohlcv``: required columns and float types; no nulls; unique, strictly increasing bar open
  times on the timeframe grid; ``low <= open, close <= high``; prices > 0; volume >= 0; share of
  missing bars and the longest gap below limits; a minimum row count.
* ``funding_rate``: no nulls; unique, increasing settlement times on the settlement cadence;
  ``|funding_rate|`` within sane bounds.
* ``open_interest``: no nulls; unique, increasing day starts; open interest > 0 (run only when the
  window holds open interest).

Derived helper columns (``grid_offset_s``, ``missing_bars_before``, ``step_hours``) turn grid,
gap and cadence rules into standard column expectations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.data_context.types.resource_identifiers import DataContextKey
    from great_expectations.datasource.fluent import PandasDatasource

logger = logging.getLogger(__name__)

_EXAMPLES = 5


@dataclass(frozen=True)
class SuiteLimits:
    """Thresholds of the suites.

    Attributes:
        bar_seconds: timeframe length in seconds.
        expected_bars: bars the window should hold (window length / bar length).
        min_row_share: minimum rows as a share of ``expected_bars``.
        max_gap_share: largest tolerated share of missing bars.
        max_gap_bars: largest tolerated single gap, in bars.
        max_abs_funding_rate: bound on ``|funding_rate|`` per settlement (fraction).
        funding_interval_hours: settlement cadence.
        window_start: first bar open time the window must hold (UTC); with it, the bars missing
            before the first row count as a gap like any other.
        window_end: end of the window (UTC); with it, the last bar must close at it, less the
            bars of ``exchange_gap_bars_at_end``: data that stops early fails, naming where it ends.
        exchange_gap_bars_at_end: bars at the end of the window that the exchange itself does
            not have (recorded gaps, ``ohlcv_gap``), which the data is not expected to hold.
    """

    bar_seconds: int
    expected_bars: int
    min_row_share: float
    max_gap_share: float
    max_gap_bars: int
    max_abs_funding_rate: float
    funding_interval_hours: int
    window_start: pd.Timestamp | None = None
    window_end: pd.Timestamp | None = None
    exchange_gap_bars_at_end: int = 0


def _ohlcv_frame(df: pd.DataFrame, limits: SuiteLimits) -> pd.DataFrame:
    """Candles with the derived columns the suite checks: ``grid_offset_s`` (seconds off the bar
    grid), ``missing_bars_before`` (bars missing between the previous row, or the window start,
    and this one) and ``missing_bars_after`` (on the last row: bars missing between its close and
    the window end, less recorded exchange gaps there; 0 elsewhere)."""
    bar_seconds = limits.bar_seconds
    out = df.copy()
    epoch_s = (out["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    out["grid_offset_s"] = (epoch_s % bar_seconds).astype("int64")
    first = bar_seconds
    if limits.window_start is not None and len(out):
        first = (out["timestamp"].iloc[0] - pd.Timestamp(limits.window_start)) / pd.Timedelta(seconds=1) + bar_seconds
    steps = epoch_s.diff().fillna(first)
    out["missing_bars_before"] = (steps / bar_seconds - 1).clip(lower=0).astype("float64")
    out["missing_bars_after"] = 0.0
    if limits.window_end is not None and len(out):
        last_close = out["timestamp"].iloc[-1] + pd.Timedelta(seconds=bar_seconds)
        behind = (pd.Timestamp(limits.window_end) - last_close) / pd.Timedelta(seconds=bar_seconds)
        out.loc[out.index[-1], "missing_bars_after"] = max(0.0, float(behind) - limits.exchange_gap_bars_at_end)
    return out


def _funding_frame(df: pd.DataFrame, interval_h: int) -> pd.DataFrame:
    out = df.copy()
    out["settlement_hour"] = out["timestamp"].dt.hour.astype("int64")
    out["step_hours"] = (out["timestamp"].diff() / pd.Timedelta(hours=1)).fillna(interval_h)
    return out


def min_rows(limits: SuiteLimits) -> int:
    """Least candles the window must hold: ``min_row_share`` of its expected bars, at least 1."""
    return max(1, int(np.ceil(limits.min_row_share * limits.expected_bars)))


def _ohlcv_expectations(gxe: Any, limits: SuiteLimits, row_floor: int | None = None) -> list[Any]:
    """The candle suite; ``row_floor`` replaces :func:`min_rows` in the row-count check (a subset
    of the window whose row count was checked on the whole window)."""
    cols = ["timestamp", "open", "high", "low", "close", "volume"]
    exps: list[Any] = [
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows(limits) if row_floor is None else row_floor),
        gxe.ExpectTableColumnsToMatchSet(
            column_set=cols + ["grid_offset_s", "missing_bars_before", "missing_bars_after"], exact_match=True),
    ]
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in cols]
    exps += [gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=["float64", "float32"])
             for c in cols[1:]]
    exps += [
        gxe.ExpectColumnValuesToBeUnique(column="timestamp"),
        gxe.ExpectColumnValuesToBeIncreasing(column="timestamp", strictly=True),
        gxe.ExpectColumnValuesToBeInSet(column="grid_offset_s", value_set=[0]),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="low", or_equal=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="open", or_equal=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="close", or_equal=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="open", column_B="low", or_equal=True),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="close", column_B="low", or_equal=True),
    ]
    exps += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True)
             for c in ("open", "high", "low", "close")]
    exps += [
        gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0),
        gxe.ExpectColumnSumToBeBetween(
            column="missing_bars_before", min_value=0,
            max_value=limits.max_gap_share * limits.expected_bars),
        gxe.ExpectColumnMaxToBeBetween(column="missing_bars_before", min_value=0,
                                       max_value=limits.max_gap_bars),
        # The data must reach the window's end: the last fold and the lineage's trained_until say so.
        gxe.ExpectColumnMaxToBeBetween(column="missing_bars_after", min_value=0, max_value=0),
    ]
    return exps


def _funding_expectations(gxe: Any, limits: SuiteLimits) -> list[Any]:
    hours = list(range(0, 24, limits.funding_interval_hours))
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="timestamp"),
        gxe.ExpectColumnValuesToNotBeNull(column="funding_rate"),
        gxe.ExpectColumnValuesToBeUnique(column="timestamp"),
        gxe.ExpectColumnValuesToBeIncreasing(column="timestamp", strictly=True),
        gxe.ExpectColumnValuesToBeInSet(column="settlement_hour", value_set=hours),
        gxe.ExpectColumnValuesToBeInSet(column="step_hours", value_set=[float(limits.funding_interval_hours)]),
        gxe.ExpectColumnValuesToBeBetween(column="funding_rate", min_value=-limits.max_abs_funding_rate,
                                          max_value=limits.max_abs_funding_rate),
    ]


def _open_interest_expectations(gxe: Any) -> list[Any]:
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="timestamp"),
        gxe.ExpectColumnValuesToNotBeNull(column="open_interest"),
        gxe.ExpectColumnValuesToBeUnique(column="timestamp"),
        gxe.ExpectColumnValuesToBeIncreasing(column="timestamp", strictly=True),
        gxe.ExpectColumnValuesToBeBetween(column="open_interest", min_value=0, strict_min=True),
    ]


#: Derived columns of the whole window's checks: evaluated on every run, never recorded per bar.
WINDOW_COLUMNS = ("missing_bars_before", "missing_bars_after")


def _is_row_check(expectation: Any) -> bool:
    """Whether an expectation checks rows one by one (or each against its predecessor), so that
    a row that passed it once passes it again: not the row count, not the window's gaps."""
    config = expectation.configuration
    return (config.type != "expect_table_row_count_to_be_between"
            and config.kwargs.get("column") not in WINDOW_COLUMNS)


#: This module's source as this process imported it: the code that derives the checked columns
#: (the grid offset, the settlement hour) is part of every suite's version (:func:`suite_versions`).
_SOURCE_SHA256 = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def suite_versions(limits: SuiteLimits) -> dict[str, str]:
    """The version of each suite's row checks: sha256 of their types and arguments, this
    module's source (which derives the checked columns) as imported, and the Great Expectations
    and pandas versions. Recorded with each validated day (:mod:`include.quality.ledger`), so
    that a changed check (a new bound, a new expectation, a fixed derivation, a library upgrade)
    validates every bar again.

    Returns:
        ``{"ohlcv": sha, "funding_rate": sha, "open_interest": sha}``.
    """
    quiet_great_expectations()
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suites = {"ohlcv": _ohlcv_expectations(gxe, limits), "funding_rate": _funding_expectations(gxe, limits),
              "open_interest": _open_interest_expectations(gxe)}
    out = {}
    for name, expectations in suites.items():
        checks = [e.configuration.to_json_dict() for e in expectations if _is_row_check(e)]
        payload = json.dumps({"great_expectations": gx.__version__, "pandas": pd.__version__, "code": _SOURCE_SHA256,
                              "suite": name, "checks": checks}, sort_keys=True, default=str)
        out[name] = hashlib.sha256(payload.encode()).hexdigest()
    return out


def _window_rows(name: str, frame: pd.DataFrame, limits: SuiteLimits) -> np.ndarray:
    """Rows of a derived frame that the window's checks read: the first and the last row, and
    each row that follows a gap (candles) or an off-cadence step (funding). Kept in a subset, they
    make the subset's gap sum, largest gap and end of data those of the whole window."""
    keep = np.zeros(len(frame), dtype=bool)
    if len(frame):
        keep[[0, -1]] = True
    if name == "ohlcv":
        keep |= (frame["missing_bars_before"] > 0).to_numpy() | (frame["missing_bars_after"] > 0).to_numpy()
    elif name == "funding_rate":
        keep |= (frame["step_hours"] != float(limits.funding_interval_hours)).to_numpy()
    return keep


def _summarise(suite: str, result: Any, frame: pd.DataFrame) -> dict[str, Any]:
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
        res = r.result or {}
        examples: list[dict[str, Any]] = []
        idx = res.get("partial_unexpected_index_list") or []
        for i in idx[:_EXAMPLES]:
            pos = i if isinstance(i, (int, np.integer)) else i.get("index") if isinstance(i, dict) else None
            if pos is not None and 0 <= int(pos) < len(frame):
                row = frame.iloc[int(pos)]
                examples.append({k: _jsonable(v) for k, v in row.items()})
        exc = r.exception_info or {}
        failures.append({
            "message": _plain_message(cfg.type, kwargs, res.get("observed_value"), frame),
            "expectation": cfg.type,
            "kwargs": {k: (v if isinstance(v, (int, float, str, bool, list, type(None))) else str(v))
                       for k, v in kwargs.items()},
            "observed_value": _jsonable(res.get("observed_value")),
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_examples": [_jsonable(v) for v in (res.get("partial_unexpected_list") or [])[:_EXAMPLES]],
            "example_rows": examples,
            "exception": exc.get("exception_message") if exc.get("raised_exception") else None,
        })
    return {"suite": suite, "success": not failures, "rows": int(len(frame)),
            "evaluated": len(result.results), "failed": failures}


def _when(ts: Any) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%MZ")


def _plain_message(expectation: str, kwargs: dict[str, Any], observed: Any, frame: pd.DataFrame) -> str:
    """One sentence a person can act on: what was found, where, and the limit it broke."""
    limits = {k: v for k, v in kwargs.items() if k not in ("batch_id", "column", "column_A", "column_B",
                                                           "result_format")}
    if kwargs.get("column") == "missing_bars_after" and len(frame):
        return (f"the candles end with the bar opening {_when(frame['timestamp'].iloc[-1])}, {observed:.0f} bar(s) "
                "before the window's end, with no exchange gap recorded there: the data stops early (a stale "
                "source or an interrupted ingestion)")
    if kwargs.get("column") == "missing_bars_before" and "missing_bars_before" in frame and len(frame):
        worst = frame.loc[frame["missing_bars_before"].idxmax()]
        largest = f"{worst['missing_bars_before']:.0f} missing bars before {_when(worst['timestamp'])}"
        if expectation == "expect_column_max_to_be_between":
            return f"{largest} (max_gap_bars={limits.get('max_value'):g})"
        return (f"{observed:.0f} missing bars in the window, over the {limits.get('max_value'):g} allowed "
                f"(max_gap_share x expected bars); the largest gap: {largest}")
    if expectation == "expect_table_row_count_to_be_between":
        text = f"{observed} rows in the window; at least {limits.get('min_value')} expected (min_row_share x bars)"
        if len(frame) and "timestamp" in frame:
            text += (f"; the rows run from the bar opening {_when(frame['timestamp'].iloc[0])} to the bar opening "
                     f"{_when(frame['timestamp'].iloc[-1])}")
            behind = float(frame["missing_bars_after"].iloc[-1]) if "missing_bars_after" in frame else 0.0
            if behind > 0 and len(frame) > 1:
                bar = frame["timestamp"].diff().median()
                text += (f", {behind:.0f} bar(s) ({behind * bar / pd.Timedelta(days=1):.1f} days) before the "
                         "window's end: the source's data stops there (a stale source or an interrupted ingestion)")
        return text
    column = kwargs.get("column") or f"{kwargs.get('column_A')} vs {kwargs.get('column_B')}"
    expected = ", ".join(f"{k}={v}" for k, v in limits.items()) or "see the expectation"
    return f"{column}: {expectation} failed; expected {expected}; observed {observed!r}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (pd.Timestamp,)):
        return v.isoformat()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


def _ephemeral_context(docs_dir: Path | None) -> AbstractDataContext:
    """An ephemeral Great Expectations context without progress bars; with ``docs_dir``, it holds
    the Data Docs site :data:`DOCS_SITE` there. Returns the context."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}})
    return context


def _validated_masks(ohlcv: pd.DataFrame, limits: SuiteLimits,
                     validated: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The masks of rows validated before that the suites may skip: ``validated``, less the
    candles' mask when the window holds fewer than :func:`min_rows`. Returns a new dict."""
    done = dict(validated or {})
    if len(ohlcv) < min_rows(limits):
        done.pop("ohlcv", None)  # too few rows: the whole window's row-count failure, as from scratch
    return done


def _suite_plan(gxe: Any, ohlcv: pd.DataFrame, funding: pd.DataFrame | None, open_interest: pd.DataFrame | None,
                limits: SuiteLimits, done: dict[str, np.ndarray]) -> list[tuple[str, pd.DataFrame, list[Any]]]:
    """The suites to run, in order: ``(name, derived frame, expectations)`` for the candles, then the
    funding settlements and the open interest where given. Returns the list."""
    subset_floor = 1 if done.get("ohlcv") is not None and done["ohlcv"].any() else None
    plan = [("ohlcv", _ohlcv_frame(ohlcv, limits), _ohlcv_expectations(gxe, limits, subset_floor))]
    if funding is not None:
        plan.append(("funding_rate", _funding_frame(funding, limits.funding_interval_hours),
                     _funding_expectations(gxe, limits)))
    if open_interest is not None and not open_interest.empty:
        plan.append(("open_interest", open_interest.copy(), _open_interest_expectations(gxe)))
    return plan


def _validate_suite(context: AbstractDataContext, source: PandasDatasource, name: str, frame: pd.DataFrame,
                    expectations: list[Any],
                    checkpoint: bool) -> tuple[ExpectationSuiteValidationResult, list[DataContextKey]]:
    """Run the suite ``name`` on ``frame`` in ``context``: through a checkpoint with ``checkpoint``
    (for Data Docs), else on the batch directly. Returns the validation result and the resource
    identifiers for the Data Docs site (the validation result and the suite; none without
    ``checkpoint``)."""
    import great_expectations as gx
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    asset = source.add_dataframe_asset(name=name)
    batch_def = asset.add_batch_definition_whole_dataframe(f"{name}_window")
    # Built whole and stored once (adding expectations one by one rewrites the stored suite each time).
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=expectations))
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": _EXAMPLES,
                     "include_unexpected_rows": False, "return_unexpected_index_query": False}
    if not checkpoint:
        result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format=result_format)
        return result, []
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch_def, suite=suite, name=f"{name}_validation"))
    runner = context.checkpoints.add(gx.Checkpoint(
        name=f"{name}_checkpoint", validation_definitions=[definition], result_format=result_format))
    identifier, result = next(iter(runner.run(batch_parameters={"dataframe": frame}).run_results.items()))
    return result, [identifier, ExpectationSuiteIdentifier(name=suite.name)]


def run_suites(ohlcv: pd.DataFrame, funding: pd.DataFrame | None, open_interest: pd.DataFrame | None,
               limits: SuiteLimits, docs_dir: Path | None = None,
               validated: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Validate one window of market data with Great Expectations.

    Args:
        ohlcv: candles of the window, columns timestamp (UTC) + OHLCV.
        funding: funding settlements of the window, or ``None`` to skip the funding suite.
        open_interest: daily open interest, or ``None``/empty to skip its suite.
        limits: thresholds.
        docs_dir: when given, each suite runs through a Great Expectations checkpoint, and the
            site is built once for all of them: the suites and their validation results as Data
            Docs there (``index.html``).
        validated: per suite (``ohlcv``, ``funding_rate``, ``open_interest``), a boolean mask
            over that frame's rows that passed the same row checks before
            (:func:`include.quality.ledger.validated_rows`). The suite then runs on the other
            rows plus those the window's checks read (:func:`_window_rows`), with the derived gap
            columns computed on the whole window, so the gap and end-of-data checks see the whole
            window; the row count is checked on the whole window first (fewer rows than
            :func:`min_rows`: the whole window is validated).

    Returns:
        ``{"success": bool, "incremental": bool, "suites": [per-suite summary]}``, plus
        ``data_docs`` (the index page) with ``docs_dir``; each summary gives the window's
        ``rows``, the ``validated_rows`` the suite ran on, and every failed expectation with its
        type, arguments, observed value and up to five example rows. ``incremental`` is true when
        a suite ran on a subset.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    quiet_great_expectations()
    import great_expectations.expectations as gxe

    context = _ephemeral_context(docs_dir)
    source = context.data_sources.add_pandas("market")
    done = _validated_masks(ohlcv, limits, validated)
    plan = _suite_plan(gxe, ohlcv, funding, open_interest, limits, done)

    summaries, incremental, rendered = [], False, []
    for name, frame, expectations in plan:
        frame = frame.reset_index(drop=True)
        window_rows = len(frame)
        mask = done.get(name)
        if mask is not None and mask.any():
            frame = frame[~mask | _window_rows(name, frame, limits)].reset_index(drop=True)
            incremental = True
        result, identifiers = _validate_suite(context, source, name, frame, expectations,
                                              checkpoint=docs_dir is not None)
        rendered += identifiers
        summary = {**_summarise(name, result, frame), "rows": window_rows, "validated_rows": int(len(frame))}
        logger.info("suite %s on %d of the window's %d rows: %d expectations, %d failed", name, len(frame),
                    window_rows, summary["evaluated"], len(summary["failed"]))
        summaries.append(summary)
    out = {"success": all(s["success"] for s in summaries), "incremental": incremental, "suites": summaries}
    if docs_dir is not None:
        # One build of the site for all suites (what UpdateDataDocsAction does for one result).
        context.build_data_docs(site_names=[DOCS_SITE], resource_identifiers=rendered, build_index=True)
        out["data_docs"] = str(docs_dir / "index.html")
    return out


#: The Data Docs site of a validation (one per run folder).
DOCS_SITE = "run"


def quiet_great_expectations() -> None:
    """Keep Great Expectations' import-time INFO records out of task logs.

    Importing GX 1.x logs about 200 "Skipping registering function ..." lines from
    ``great_expectations._docs_decorators`` (and datasource registration from
    ``great_expectations.datasource``); only its warnings and errors are worth a reader's time.
    """
    for name in ("great_expectations", "great_expectations._docs_decorators"):
        logging.getLogger(name).setLevel(logging.WARNING)


def format_failures(report: dict[str, Any]) -> str:
    """One line per failed expectation: suite, a plain message (what, where, the limit), examples."""
    lines = []
    for suite in report["suites"]:
        failed = suite["failed"]
        if suite.get("rows") == 0:  # an empty window: the row count says it all, the rest follows from it
            failed = [f for f in failed if f["expectation"] == "expect_table_row_count_to_be_between"] or failed
        for f in failed:
            cols = {k: v for k, v in f["kwargs"].items() if k.startswith("column")}
            line = f"{suite['suite']}: {f.get('message') or cols} [{f['expectation']}]"
            if f["unexpected_count"]:
                line += f" unexpected={f['unexpected_count']}"
            if f["example_rows"]:
                line += f" e.g. {f['example_rows'][:2]}"
            elif f["unexpected_examples"]:
                line += f" e.g. {f['unexpected_examples'][:3]}"
            if f["exception"]:
                line += f" error={f['exception']}"
            lines.append(line)
    return "\n".join(lines)

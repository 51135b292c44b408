"""The universe of markets: which registered models a weekly run trains, and their parameters.

The universe file (YAML, ``include/universe.yaml`` by default, ``MARKET_UNIVERSE_FILE`` or the
DAG's ``universe_file`` param to use another) lists markets::

    version: 1
    markets:
      - {exchange: binance, symbol: BTCUSDT, market_type: perp, timeframe: 1h}
      - {exchange: binance, symbol: ETHUSDT, market_type: perp, timeframe: 1h,
         params: {label_horizon_bars: 8}}

A market's run configuration is, field by field: the :class:`~include.config.RunConfig`
default, then the run's own parameters (the trigger form, ``--conf``), then the market's
``params`` from the file. The market's registered model follows from the result
(:attr:`RunConfig.model_name`), so a per-market horizon is its own registered model.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from include.config import PROJECT_ROOT, RunConfig, env_int
from include.errors import ConfigError
from include.identity import Market

logger = logging.getLogger(__name__)

DEFAULT_UNIVERSE = PROJECT_ROOT / "include" / "universe.yaml"
_MARKET_KEYS = ("exchange", "symbol", "market_type", "timeframe")


@dataclass(frozen=True)
class UniverseEntry:
    """One entry of the universe file.

    Attributes:
        market: the market (:class:`include.identity.Market`).
        params: per-market run-parameter overrides (RunConfig field -> value).
    """

    market: Market
    params: dict[str, Any]

    def config(self, run_params: dict[str, Any]) -> RunConfig:
        """This market's configuration: defaults, then ``run_params``, then the market's ``params``.

        Raises:
            ConfigError: a value is invalid; the message names the market and the field.
        """
        merged = {k: v for k, v in run_params.items() if k not in _MARKET_KEYS}
        merged.update(self.params)
        market = self.market
        merged.update(exchange=market.exchange, symbol=market.symbol, market_type=market.market_type,
                      timeframe=market.timeframe)
        try:
            return RunConfig.from_params(merged)
        except ConfigError as exc:
            raise ConfigError(f"market {market.symbol} {market.market_type} {market.timeframe}: {exc}") from None


def universe_path(path: str | None = None) -> Path:
    """The universe file to use: ``path``, else ``MARKET_UNIVERSE_FILE``, else the bundled one."""
    raw = path or os.environ.get("MARKET_UNIVERSE_FILE")
    return Path(raw).expanduser().resolve() if raw else DEFAULT_UNIVERSE


def load_universe(path: str | Path | None = None) -> list[UniverseEntry]:
    """Read and check a universe file.

    Returns:
        The markets, in file order.

    Raises:
        ConfigError: the file is missing or not YAML, a market lacks a field, a field is not a
            run parameter, or two entries are the same market.
    """
    import yaml

    file = universe_path(str(path) if path else None)
    if not file.is_file():
        raise ConfigError(f"universe file {file} does not exist")
    try:
        doc = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"universe file {file} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("markets"), list) or not doc["markets"]:
        raise ConfigError(f"universe file {file}: expected a non-empty 'markets' list")
    known = {f.name for f in fields(RunConfig)} - set(_MARKET_KEYS)
    markets, seen = [], set()
    for i, entry in enumerate(doc["markets"], start=1):
        where = f"universe file {file}, market {i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with {', '.join(_MARKET_KEYS)}")
        unknown = set(entry) - set(_MARKET_KEYS) - {"params"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; put run parameters under 'params'")
        missing = [k for k in ("symbol", "market_type", "timeframe") if not entry.get(k)]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        params = entry.get("params") or {}
        if not isinstance(params, dict) or set(params) - known:
            raise ConfigError(f"{where}: params {sorted(set(params) - known) if isinstance(params, dict) else params!r}"
                              " are not run parameters")
        market = Market(str(entry.get("exchange", "binance")).lower(), str(entry["symbol"]).upper(),
                        str(entry["market_type"]), str(entry["timeframe"]))
        try:  # the market's own fields, the path-forming names among them
            RunConfig(exchange=market.exchange, symbol=market.symbol, market_type=market.market_type,  # type: ignore[arg-type]
                      timeframe=market.timeframe)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        key = (market.exchange, market.symbol, market.market_type, market.timeframe,
               json.dumps(params, sort_keys=True, default=str))
        if key in seen:
            raise ConfigError(f"{where}: {market.symbol} {market.market_type} {market.timeframe} is listed twice")
        seen.add(key)
        markets.append(UniverseEntry(market, dict(params)))
    return markets


def plan_markets(run_params: dict[str, Any], *, selected: list[str] | None = None,
                 path: str | Path | None = None) -> list[RunConfig]:
    """The run configurations of the markets a run trains, one per registered model.

    Args:
        run_params: the run's parameters (applied to every market, below its own overrides).
        selected: symbols (``BTCUSDT``) or registered-model names to train; ``None`` or empty
            means every market in the universe.
        path: universe file (see :func:`universe_path`).

    Raises:
        ConfigError: see :func:`load_universe`; ``run_params`` set a market field (exchange,
            symbol, market type, timeframe); a selection matches no market; two markets resolve
            to the same registered model.
    """
    per_market = sorted(k for k in _MARKET_KEYS if run_params.get(k) is not None)
    if per_market:
        raise ConfigError(f"run parameter(s) {per_market} are set per market in the universe file; "
                          "choose markets with the 'markets' param (symbols or registered-model names)")
    configs = [m.config(run_params) for m in load_universe(path)]
    if selected:
        wanted = {s.strip() for s in selected if s and s.strip()}
        chosen = [c for c in configs if c.symbol in {w.upper() for w in wanted} or c.model_name in wanted]
        matched = {c.symbol for c in chosen} | {c.model_name for c in chosen}
        unmatched = sorted(w for w in wanted if w not in matched and w.upper() not in matched)
        if unmatched:
            raise ConfigError(f"markets {unmatched} are not in the universe "
                              f"({', '.join(c.model_name for c in configs)})")
        configs = chosen
    names = [c.model_name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"universe lists registered model(s) {dupes} more than once")
    logger.info("universe: %d market(s): %s", len(configs), ", ".join(names))
    return configs


#: Instances of the ``market`` task group per executor slot, when the batch size is automatic:
#: two per slot keep every slot busy while the slowest instances finish.
INSTANCES_PER_SLOT = 2


def market_group_instances() -> int:
    """Most instances of the weekly run's ``market`` task group: ``MARKET_GROUP_INSTANCES``, else
    :data:`INSTANCES_PER_SLOT` x Airflow's ``[core] parallelism`` (the task instances a scheduler
    runs at once; 32 by default, so 64 instances).

    Each instance costs about eleven task instances of scheduling, whatever the markets it holds:
    on a 2-core deployment with parallelism 4, 100 markets of one market each ran 1,104 task
    instances, and the scheduler spent 911 ms of CPU on each (``bench/universe_scale.py``).

    Raises:
        ConfigError: ``MARKET_GROUP_INSTANCES`` is not a positive integer.
    """
    override = env_int("MARKET_GROUP_INSTANCES", None)
    if override is not None:
        return override
    from airflow.configuration import conf

    return INSTANCES_PER_SLOT * max(1, conf.getint("core", "parallelism", fallback=32))


def batch_markets(plans: list[dict[str, Any]], size: int | None = None,
                  instances: int | None = None) -> list[dict[str, Any]]:
    """Deal the run's market plans into the instances of the ``market`` task group.

    Each instance runs every step for each market of its batch in turn. A market that asks for
    a person's approval (``require_approval``) gets an instance of its own, since an approval
    task asks about one candidate. The others are cut, in plan order, into batches of ``size``
    markets, or, when ``size`` is ``None``, into at most ``instances`` batches of sizes that
    differ by at most one (one market per batch while the markets fit).

    Args:
        plans: from :func:`include.pipeline.plan_universe` (``{"model", "config", "window"}``).
        size: markets per batch (the run's ``market_batch_size``); ``None`` for automatic.
        instances: most batches when automatic; default :func:`market_group_instances`.

    Returns:
        ``[{"label": str, "plans": [plan, ...]}, ...]``: ``label`` is the registered model's name
        for a batch of one (the grid's map index), else the first model and how many follow.

    Raises:
        ConfigError: ``size`` is below 1.
    """
    if size is not None and size < 1:
        raise ConfigError(f"market_batch_size={size}: expected at least 1 market per instance")
    alone = [p for p in plans if p["config"].get("require_approval")]
    rest = [p for p in plans if not p["config"].get("require_approval")]
    if size is None:
        slots = max(1, (instances or market_group_instances()) - len(alone))
        size = -(-len(rest) // slots) if rest else 1
    count = -(-len(rest) // size)
    base, extra = divmod(len(rest), count) if count else (0, 0)
    sizes = [base + (1 if i < extra else 0) for i in range(count)]
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for plan in plans:  # plan order within batches; an approval market's batch is emitted when reached
        if plan["config"].get("require_approval"):
            batches.append([plan])
            continue
        current.append(plan)
        if len(current) == sizes[0]:
            batches.append(current)
            current, sizes = [], sizes[1:]
    return [{"label": b[0]["model"] if len(b) == 1 else f"{b[0]['model']} (+{len(b) - 1} more)", "plans": b}
            for b in batches]

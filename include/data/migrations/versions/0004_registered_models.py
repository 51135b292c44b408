"""Registered models: every version, alias and ledger row belongs to one market and target.

A registered model is one exchange, symbol, market type, timeframe, label horizon and label
threshold rule (see :class:`include.registry.RegisteredModel`). This revision adds the
``registered_model`` table, a ``model`` column on ``model_version`` and ``model_alias_event``,
and re-keys ``model_alias`` by ``(model, alias)``, so that each registered model has its own
``production`` and ``challenger``.

Existing rows are moved, not dropped: each version's registered model is derived from its
lineage (``metadata.json`` as registered), each alias row and ledger row takes the model of
the version it names. The naming rule is frozen here as it was at this revision, so later code
changes cannot change how old rows were mapped.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_DEFAULT_RULE = ("volatility", 0.43, 168)


def _identity(lineage: dict[str, Any]) -> dict[str, Any]:
    config = lineage.get("config") or {}
    return {
        "exchange": str(lineage.get("exchange") or config.get("exchange") or "binance").lower(),
        "symbol": str(lineage.get("symbol") or config.get("symbol") or "BTCUSDT").upper(),
        "market_type": str(lineage.get("market_type") or config.get("market_type") or "perp"),
        "timeframe": str(lineage.get("timeframe") or config.get("timeframe") or "1h"),
        "label_horizon_bars": int(config.get("label_horizon_bars", 4)),
        "label_threshold_mode": str(config.get("label_threshold_mode", "volatility")),
        "label_threshold": float(config.get("label_threshold", 0.43)),
        "label_vol_window_bars": int(config.get("label_vol_window_bars", 168)),
    }


def _name(ident: dict[str, Any]) -> str:
    name = (f"{ident['exchange']}-{ident['symbol'].lower()}-{ident['market_type']}-{ident['timeframe']}"
            f"-h{ident['label_horizon_bars']}")
    rule = (ident["label_threshold_mode"], ident["label_threshold"], ident["label_vol_window_bars"])
    if rule != _DEFAULT_RULE:
        if ident["label_threshold_mode"] == "fixed":
            name += f"-fixed{ident['label_threshold']:g}"
        else:
            name += f"-vol{ident['label_threshold']:g}w{ident['label_vol_window_bars']}"
    return name


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _create_registered_model_table() -> None:
    """Create the ``registered_model`` table (one row per market and target); returns nothing."""
    op.create_table(
        "registered_model",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("exchange", sa.String(32), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("market_type", sa.String(8), nullable=False),
        sa.Column("timeframe", sa.String(8), nullable=False),
        sa.Column("label_horizon_bars", sa.Integer, nullable=False),
        sa.Column("label_rule", sa.JSON, nullable=False,
                  comment="label threshold rule: mode, threshold, vol_window_bars"),
        sa.Column("created_at", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
    )


def _register_version_models(bind: sa.engine.Connection) -> dict[str, str]:
    """Insert a ``registered_model`` row for each model the existing versions belong to (created at
    its first version's registration). Returns each version's registered model name."""
    models = sa.table(
        "registered_model", sa.column("name"), sa.column("exchange"), sa.column("symbol"),
        sa.column("market_type"), sa.column("timeframe"), sa.column("label_horizon_bars"),
        sa.column("label_rule", sa.JSON), sa.column("created_at"))

    # Which registered model each existing version belongs to, from its lineage.
    versions = bind.execute(sa.text("SELECT version, lineage, registered_at FROM model_version")).all()
    model_of: dict[str, str] = {}
    created: dict[str, int] = {}
    for version, lineage, registered_at in versions:
        ident = _identity(_json(lineage) or {})
        name = _name(ident)
        model_of[version] = name
        if name not in created:
            created[name] = int(registered_at)
            bind.execute(models.insert().values(
                name=name, exchange=ident["exchange"], symbol=ident["symbol"], market_type=ident["market_type"],
                timeframe=ident["timeframe"], label_horizon_bars=ident["label_horizon_bars"],
                label_rule={"mode": ident["label_threshold_mode"], "threshold": ident["label_threshold"],
                            "vol_window_bars": ident["label_vol_window_bars"]},
                created_at=int(registered_at)))
    return model_of


def _add_version_model_column(bind: sa.engine.Connection, model_of: dict[str, str]) -> None:
    """Add ``model_version.model`` (not null, a foreign key to ``registered_model``, indexed), filled
    from ``model_of``; returns nothing."""
    with op.batch_alter_table("model_version") as batch:
        batch.add_column(sa.Column("model", sa.String(128), nullable=True))
    for version, name in model_of.items():
        bind.execute(sa.text("UPDATE model_version SET model = :m WHERE version = :v"), {"m": name, "v": version})
    with op.batch_alter_table("model_version") as batch:
        batch.alter_column("model", existing_type=sa.String(128), nullable=False)
        batch.create_foreign_key("fk_model_version_model", "registered_model", ["model"], ["name"])
        batch.create_index("ix_model_version_model", ["model"])


def _add_ledger_model_column(bind: sa.engine.Connection, model_of: dict[str, str]) -> None:
    """Add ``model_alias_event.model`` (not null, indexed), each row taking the model of the version
    it names; returns nothing.

    Raises:
        RuntimeError: a ledger row names no registered version.
    """
    # Ledger rows take the model of the version they name (revision 0003 wrote no row without one).
    with op.batch_alter_table("model_alias_event") as batch:
        batch.add_column(sa.Column("model", sa.String(128), nullable=True))
    events = bind.execute(sa.text(
        "SELECT id, to_version, from_version, candidate FROM model_alias_event ORDER BY id")).all()
    for event_id, to_v, from_v, cand in events:
        name = model_of.get(to_v) or model_of.get(from_v) or model_of.get(cand)
        if name is None:
            raise RuntimeError(f"model_alias_event {event_id} names no registered version; cannot assign a model")
        bind.execute(sa.text("UPDATE model_alias_event SET model = :m WHERE id = :i"), {"m": name, "i": event_id})
    with op.batch_alter_table("model_alias_event") as batch:
        batch.alter_column("model", existing_type=sa.String(128), nullable=False)
        batch.create_index("ix_model_alias_event_model", ["model"])


def _recreate_model_alias_table() -> None:
    """Replace the global ``model_alias`` table with one keyed by ``(model, alias)``; returns nothing."""
    op.drop_table("model_alias")
    op.create_table(
        "model_alias",
        sa.Column("model", sa.String(128), sa.ForeignKey("registered_model.name"), primary_key=True),
        sa.Column("alias", sa.String(32), primary_key=True),
        sa.Column("version", sa.String(64), sa.ForeignKey("model_version.version"), nullable=False),
        sa.Column("since", sa.BigInteger, nullable=False, comment="ms since epoch UTC"),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )


def _restore_aliases(bind: sa.engine.Connection, model_of: dict[str, str],
                     old_rows: dict[str, tuple[str, int, str, str]],
                     latest: dict[tuple[str, str], tuple[str, int, str, str]]) -> None:
    """Insert each model's alias rows at its last move in the ledger (``latest``), keeping the old
    global row's ``since``, ``run_id`` and ``reason`` where it named the same version and writing
    a "migrate" ledger row where it did not; returns nothing."""
    table = sa.table("model_alias", sa.column("model"), sa.column("alias"), sa.column("version"),
                     sa.column("since"), sa.column("run_id"), sa.column("reason"))
    ledger = sa.table("model_alias_event", sa.column("model"), sa.column("alias"), sa.column("event"),
                      sa.column("from_version"), sa.column("to_version"), sa.column("at"), sa.column("run_id"),
                      sa.column("reason"))
    now = int(time.time() * 1000)
    for (model, alias), (version, _at, run_id, reason) in sorted(latest.items()):
        old = old_rows.get(alias)
        if old is not None and old[0] == version:
            since, run_id, reason = old[1], old[2], old[3]
        else:
            since = now
            held = f"{old[0]} of {model_of.get(old[0])}" if old else "nothing"
            note = (f"migration 0004: {alias} of {model} restored to its last version in the ledger "
                    f"(the single {alias} alias pointed at {held})")
            bind.execute(ledger.insert().values(model=model, alias=alias, event="migrate", from_version=None,
                                                to_version=version, at=now, run_id="migration:0004", reason=note))
            run_id, reason = "migration:0004", note
        bind.execute(table.insert().values(model=model, alias=alias, version=version, since=since,
                                           run_id=run_id, reason=reason))


def _rebuild_aliases(bind: sa.engine.Connection, model_of: dict[str, str]) -> None:
    """Re-key ``model_alias`` by ``(model, alias)``, each model's alias rebuilt from its own
    ledger; returns nothing."""
    # Aliases: one row per (model, alias). Under 0003 one global alias could be moved from one
    # market's version to another's; each model's alias is rebuilt from its own ledger: the last
    # move into one of its versions. Where that differs from the old global row, a "migrate"
    # ledger row says so.
    old_rows = {alias: (version, since, run_id, reason) for alias, version, since, run_id, reason in
                bind.execute(sa.text("SELECT alias, version, since, run_id, reason FROM model_alias")).all()}
    moves = bind.execute(sa.text(
        "SELECT alias, to_version, at, run_id, reason FROM model_alias_event "
        "WHERE event != 'keep' ORDER BY id")).all()
    latest: dict[tuple[str, str], tuple[str, int, str, str]] = {}
    for alias, to_v, at, run_id, reason in moves:
        if to_v in model_of:
            latest[(model_of[to_v], alias)] = (to_v, int(at), run_id, reason)
    _recreate_model_alias_table()
    _restore_aliases(bind, model_of, old_rows, latest)


def upgrade() -> None:
    bind = op.get_bind()
    _create_registered_model_table()
    model_of = _register_version_models(bind)
    _add_version_model_column(bind, model_of)
    _add_ledger_model_column(bind, model_of)
    _rebuild_aliases(bind, model_of)


def downgrade() -> None:
    raise NotImplementedError("0004 cannot be downgraded: aliases of several models cannot share one row")

"""DAG run notes: the weekly run's decisions, where a person looks first in the Airflow UI.

A rejected candidate leaves a green run: keeping production is a success, not a failure. So when
a run of a DAG that publishes a summary ends (success or failure), this listener names the market
instances that never ran (a skipped market's) after their registered model, and writes the
``note`` that ``publish_summary`` returned (:func:`include.pipeline.publication.run_note`: each
market's decision, its failed gate checks, a link to its report) as the run's note, shown on the
run's page and in the runs list.

It runs in the scheduler (and in ``dag.test()``), which owns the run's database session; a task
cannot set its own run's note through the Task SDK. A note a person wrote (it has a user) is
never overwritten; a note this listener wrote earlier (no user) is replaced when the run is
cleared and ends again.
"""

from __future__ import annotations

import logging
import sys

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

logger = logging.getLogger(__name__)

#: The task whose return value carries the note, and the key of the note in it.
SUMMARY_TASK = "publish_summary"
NOTE_KEY = "note"


def _published_note(session, dag_id: str, run_id: str) -> str | None:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    row = session.execute(
        select(XComModel.value).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id,
                                      XComModel.task_id == SUMMARY_TASK, XComModel.key == "return_value",
                                      XComModel.map_index == -1)
    ).first()
    if row is None:
        return None
    value = XComModel.deserialize_value(row)
    return value.get(NOTE_KEY) if isinstance(value, dict) else None


#: The task whose return value lists the run's market plans, one per map index of the group.
PLAN_TASK = "plan_run"
#: The mapped task group of one market.
MARKET_GROUP = "market."


def _name_skipped_markets(session, dag_run) -> int:
    """Give the market group's instances that never ran (skipped with their market) their batch's
    label (the registered model's name for one market) as their map index label, as the ones that ran render it from
    ``map_index_template``: in the grid a skipped market is named, not numbered."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import select, update

    row = session.execute(
        select(XComModel.value).where(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id,
                                      XComModel.task_id == PLAN_TASK, XComModel.key == "return_value",
                                      XComModel.map_index == -1)
    ).first()
    batches = XComModel.deserialize_value(row) if row is not None else None
    if not isinstance(batches, list):
        return 0
    # The table's own column: the model's attribute of the same name is a read-only fallback to
    # the bare index.
    table = TaskInstance.__table__
    named = 0
    for index, batch in enumerate(batches):
        # A batch's label (include/universe.py); a bare plan's model in runs planned one market per instance.
        label = batch.get("label") or batch.get("model") if isinstance(batch, dict) else None
        if label:
            named += session.execute(
                update(table).where(table.c.dag_id == dag_run.dag_id, table.c.run_id == dag_run.run_id,
                                    table.c.task_id.startswith(MARKET_GROUP), table.c.map_index == index,
                                    table.c.rendered_map_index.is_(None))
                .values(rendered_map_index=label)).rowcount
    return named


def _write(session, dag_run) -> bool:
    try:
        with session.begin_nested():  # a savepoint: an error here leaves the scheduler's transaction whole
            _name_skipped_markets(session, dag_run)
    except Exception:  # names in the grid are not worth losing the note over
        logger.exception("could not name the unrendered market instances of %s", dag_run)
    note = _published_note(session, dag_run.dag_id, dag_run.run_id)
    if not note:
        return False
    current = dag_run.dag_run_note
    if current is not None and current.user_id is not None:
        return False  # a person's note stays
    if current is not None:
        current.content = note
    else:
        dag_run.note = note
    return True


def write_note(dag_run) -> bool:
    """Set ``dag_run``'s note to its summary's note, unless a person wrote one.

    The scheduler passes a run bound to its own session, which holds the run's row lock and
    commits the note with the state change; ``dag.test()`` passes a detached run, whose note is
    written in a session of its own.

    Returns:
        Whether the note was written. Never raises: a note is not worth a scheduler error.
    """
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    try:
        session = object_session(dag_run)
        if session is not None:
            return _write(session, dag_run)
        with create_session() as own:
            run = own.scalar(select(DagRun).where(DagRun.id == dag_run.id))
            return run is not None and _write(own, run)
    except Exception:
        logger.exception("could not write the note of %s", dag_run)
        return False


@hookimpl
def on_dag_run_success(dag_run, msg: str) -> None:
    write_note(dag_run)


@hookimpl
def on_dag_run_failed(dag_run, msg: str) -> None:
    write_note(dag_run)


class RunNotesPlugin(AirflowPlugin):
    """Registers the run-note listener with the scheduler."""

    name = "run_notes"
    listeners = [sys.modules[__name__]]

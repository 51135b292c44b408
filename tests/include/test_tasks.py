"""Task glue: permanent errors fail at once, transient ones keep Airflow's retries."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.errors import ConfigError, DataQualityError, NoDataError, SourceError, TransientSourceError
from include.tasks import fail_fast


@pytest.mark.parametrize("error", [SourceError("no OHLCV file matches"), ConfigError("bad param"),
                                   NoDataError("no candles"), DataQualityError("3 failed", {})])
def test_permanent_errors_fail_at_once_with_their_message(error):
    with pytest.raises(AirflowFailException, match=f"{type(error).__name__}: {error}") as info, fail_fast():
        raise error
    assert info.value.__cause__ is error


@pytest.mark.parametrize("error", [TransientSourceError("still failing after 3 retries"), OSError("disk"),
                                   KeyError("bug")])
def test_transient_errors_and_bugs_keep_their_retries(error):
    with pytest.raises(type(error)), fail_fast():
        raise error


def _batch(*models: str) -> dict:
    return {"label": models[0] if len(models) == 1 else f"{models[0]} (+{len(models) - 1} more)",
            "plans": [{"model": m} for m in models]}


def _step(plan: dict) -> str:
    from airflow.sdk.exceptions import AirflowSkipException

    if plan["model"].startswith("bad"):
        raise DataQualityError(f"{plan['model']}: close is missing", {})
    if plan["model"].startswith("young"):
        raise AirflowSkipException("too young")
    return plan["model"].upper()


def test_in_a_batch_each_market_fails_or_skips_alone_and_earlier_failures_are_passed_over():
    from include.tasks import each_market

    batch = _batch("bad", "young", "ok", "gone")
    assert each_market(batch, _step, {"bad": 1, "young": 1, "ok": 1}) == {"ok": "OK"}
    with pytest.raises(AirflowFailException, match="every market of bad .*bad: close is missing"):
        each_market(_batch("bad", "bad2"), _step)


def test_a_batch_of_one_market_raises_its_own_error():
    from airflow.sdk.exceptions import AirflowSkipException

    from include.tasks import each_market

    with pytest.raises(DataQualityError, match="close is missing"):
        each_market(_batch("bad"), _step)
    with pytest.raises(AirflowSkipException):
        each_market(_batch("young"), _step)
    with pytest.raises(AirflowSkipException, match="no market of young"):
        each_market(_batch("young", "young2"), _step)


def _context(try_number: int, max_tries: int = 1, map_index: int = 3) -> dict:
    from types import SimpleNamespace

    return {"ti": SimpleNamespace(dag_id="weekly_retrain", run_id="manual__2026-12-03T10:37:42+00:00",
                                  task_id="market.train_model", map_index=map_index, try_number=try_number,
                                  max_tries=max_tries, log_url="http://127.0.0.1/log")}


class _Flaky:
    """A step whose market ``flaky`` fails with a network error on its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, []

    def __call__(self, plan: dict) -> dict:
        from datetime import UTC, datetime

        self.calls.append(plan["model"])
        if plan["model"] == "flaky" and self.calls.count("flaky") <= self.failures:
            raise ConnectionResetError("connection reset by peer")
        if plan["model"] != "flaky":
            _step(plan)  # bad: a permanent failure; young: a skip
        return {"model": plan["model"], "trained_until": datetime(2023, 7, 2, tzinfo=UTC), "folds": (1, 2)}


@pytest.fixture
def market_db(tmp_path, monkeypatch):
    """An isolated market database and run folder; returns the database's engine."""
    import sqlalchemy as sa

    from include.data.store import MarketStore

    url = f"sqlite:///{tmp_path / 'market.sqlite'}"
    monkeypatch.setenv("MARKET_DB_URL", url)
    monkeypatch.setenv("RUN_ARTIFACTS_DIR", str(tmp_path / "runs"))
    MarketStore(url).dispose()
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def _kept(engine) -> list[tuple]:
    import sqlalchemy as sa

    from include.batch_outcomes import outcome_table

    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(
            outcome_table.c.task_id, outcome_table.c.map_index, outcome_table.c.model, outcome_table.c.try_number,
            outcome_table.c.max_tries).order_by(outcome_table.c.model))]


def test_a_batch_retries_only_its_markets_that_failed_and_reuses_the_others_results(market_db):
    from datetime import UTC, datetime

    from include.errors import BatchRetryError
    from include.tasks import each_market

    step, batch = _Flaky(failures=1), _batch("ok", "flaky", "bad", "young")
    with pytest.raises(BatchRetryError, match=r"1 market\(s\) of ok \(\+3 more\) failed and will be tried again: "
                                         "flaky: ConnectionResetError: connection reset by peer"):
        each_market(batch, step, context=_context(1))
    # The outcomes that stand are in the market database, beside the registry's records.
    assert _kept(market_db) == [("market.train_model", 3, m, 1, 1) for m in ("bad", "ok", "young")]

    # The retry, on any worker: only the market that failed runs again; the others' outcomes are
    # read back as the step returned them (Airflow's serialiser: datetimes and tuples stay so).
    results = each_market(batch, step, context=_context(2))
    assert step.calls == ["ok", "flaky", "bad", "young", "flaky"]
    assert results == {m: {"model": m, "trained_until": datetime(2023, 7, 2, tzinfo=UTC), "folds": (1, 2)}
                       for m in ("ok", "flaky")}
    assert _kept(market_db) == []  # removed once the task ends without a retry


def test_a_batch_alerts_a_market_that_fails_on_its_last_try(market_db, caplog):
    from include.tasks import each_market

    step = _Flaky(failures=5)
    with caplog.at_level("ERROR"):
        assert set(each_market(_batch("ok", "flaky"), step, context=_context(2))) == {"ok"}
    assert "flaky: failed; the batch's other markets go on" in caplog.text
    assert _kept(market_db) == []  # the last try keeps nothing
    # Without tries left from the start (retries=0), a failure is final at once too.
    assert set(each_market(_batch("ok", "flaky"), _Flaky(failures=1),
                           context=_context(1, max_tries=0, map_index=4))) == {"ok"}


def test_what_a_killed_try_kept_is_forgotten_at_the_end_of_the_run(market_db):
    from include.errors import BatchRetryError
    from include.tasks import each_market, forget_batch_outcomes

    with pytest.raises(BatchRetryError):
        each_market(_batch("ok", "flaky"), _Flaky(failures=1), context=_context(1))
    assert len(_kept(market_db)) == 1
    assert forget_batch_outcomes("weekly_retrain", "manual__2026-12-03T10:37:42+00:00") == 1
    assert _kept(market_db) == []
    step = _Flaky(failures=0)  # a task cleared later runs all its markets again
    assert set(each_market(_batch("ok", "flaky"), step, context=_context(2, max_tries=2))) == {"ok", "flaky"}
    assert step.calls == ["ok", "flaky"]


def test_a_planted_outcome_file_in_the_artifact_store_is_never_reused(market_db, tmp_path):
    """Issue 35, finding 1: a retry read ``<runs>/.batches/…/<map index>.json`` from the artifact
    store and handed its entries on as results (member hashes, gate decisions) without running
    the step. The store is writable by parties the registry does not trust: nothing there is read."""
    import json

    from airflow.sdk.serde import serialize

    from include.tasks import each_market

    planted = {"ok": {"result": {"sha256": "0" * 64, "passed": True}},
               "flaky": {"result": {"sha256": "0" * 64, "passed": True}}}
    path = tmp_path / "runs" / ".batches" / "weekly_retrain" / "manual__2026-12-03T10:37:42+00:00"
    path = path / "market.train_model" / "3.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(serialize(planted)))
    step = _Flaky(failures=0)
    results = each_market(_batch("ok", "flaky"), step, context=_context(2, max_tries=1))
    assert step.calls == ["ok", "flaky"]  # both ran: the planted outcomes were not taken
    assert all("sha256" not in r for r in results.values())


def test_a_cleared_task_runs_again_the_markets_an_earlier_try_sequence_finished(market_db):
    """Issue 35, finding 3: after a run was marked failed while a task waited for its retry, a
    clear starts the task at try 2 with a new ``max_tries``; the outcomes of the earlier
    sequence (results and permanent failures alike) are not reused."""
    from include.errors import BatchRetryError
    from include.tasks import each_market

    batch = _batch("ok", "bad", "flaky")
    with pytest.raises(BatchRetryError):
        each_market(batch, _Flaky(failures=1), context=_context(1, max_tries=1))
    assert [row[2] for row in _kept(market_db)] == ["bad", "ok"]
    # Cleared: Airflow sets max_tries = try_number + retries (here 1 + 1); the inputs changed too.
    step = _Flaky(failures=0)
    results = each_market(batch, step, context=_context(2, max_tries=2))
    assert step.calls == ["ok", "bad", "flaky"]
    assert set(results) == {"ok", "flaky"}


def test_an_outcome_is_reused_only_for_the_same_inputs(market_db):
    from include.errors import BatchRetryError
    from include.tasks import each_market

    with pytest.raises(BatchRetryError):
        each_market(_batch("ok", "flaky"), _Flaky(failures=1), {"ok": {"v": 1}, "flaky": {"v": 1}},
                    context=_context(1))
    step = _Flaky(failures=0)  # the same try sequence, but ok's upstream result is another
    each_market(_batch("ok", "flaky"), step, {"ok": {"v": 2}, "flaky": {"v": 1}}, context=_context(2))
    assert step.calls == ["ok", "flaky"]


def test_a_zombie_try_stops_once_its_retry_has_started(market_db):
    """Issue 35, finding 7: a zombie try and its retry ran the same markets; tries are fenced."""
    from include.batch_outcomes import BatchOutcomes
    from include.errors import SupersededTryError
    from include.tasks import each_market

    zombie = BatchOutcomes(_context(1))
    retry_step = _Flaky(failures=0)
    assert set(each_market(_batch("ok", "flaky"), retry_step, context=_context(2))) == {"ok", "flaky"}
    with pytest.raises(SupersededTryError, match="try 2 has started, so this try \\(1\\) stops"):
        zombie.record("ok", "0" * 64, result="late")
    with pytest.raises(SupersededTryError):
        each_market(_batch("ok", "flaky"), _Flaky(failures=0), context=_context(1))
    zombie.close()


@pytest.mark.parametrize("run_id", [".", "..", "a/b", "", "x" * 251, "run\x00id"])
def test_run_ids_that_could_name_other_records_are_refused(market_db, run_id):
    from include.errors import ConfigError
    from include.tasks import each_market, forget_batch_outcomes

    context = _context(1)
    context["ti"].run_id = run_id
    with pytest.raises(ConfigError, match="run id"):
        each_market(_batch("ok", "flaky"), _Flaky(failures=0), context=context)
    with pytest.raises(ConfigError, match="run id"):
        forget_batch_outcomes("weekly_retrain", run_id)

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


def _context(try_number: int, max_tries: int = 1) -> dict:
    from types import SimpleNamespace

    return {"ti": SimpleNamespace(dag_id="weekly_retrain", run_id="manual__2026-12-03T10:37:42+00:00",
                                  task_id="market.train_model", map_index=3, try_number=try_number,
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


def test_a_batch_retries_only_its_markets_that_failed_and_reuses_the_others_results(tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from include.errors import BatchRetryError
    from include.tasks import each_market

    monkeypatch.setenv("RUN_ARTIFACTS_DIR", str(tmp_path / "runs"))
    step, batch = _Flaky(failures=1), _batch("ok", "flaky", "bad", "young")
    with pytest.raises(BatchRetryError, match=r"1 market\(s\) of ok \(\+3 more\) failed and will be tried again: "
                                         "flaky: ConnectionResetError: connection reset by peer"):
        each_market(batch, step, context=_context(1))
    kept = list((tmp_path / "runs" / ".batches").rglob("*.json"))
    assert [p.relative_to(tmp_path / "runs").as_posix() for p in kept] == [
        ".batches/weekly_retrain/manual__2026-12-03T10:37:42+00:00/market.train_model/3.json"]

    # The retry, on any worker: only the market that failed runs again; the others' outcomes are
    # read back as the step returned them (Airflow's serialiser: datetimes and tuples stay so).
    results = each_market(batch, step, context=_context(2))
    assert step.calls == ["ok", "flaky", "bad", "young", "flaky"]
    assert results == {m: {"model": m, "trained_until": datetime(2023, 7, 2, tzinfo=UTC), "folds": (1, 2)}
                       for m in ("ok", "flaky")}
    assert not kept[0].exists()  # removed once the task ends without a retry


def test_a_batch_alerts_a_market_that_fails_on_its_last_try(tmp_path, monkeypatch, caplog):
    from include.tasks import each_market

    monkeypatch.setenv("RUN_ARTIFACTS_DIR", str(tmp_path / "runs"))
    step = _Flaky(failures=5)
    with caplog.at_level("ERROR"):
        assert set(each_market(_batch("ok", "flaky"), step, context=_context(2))) == {"ok"}
    assert "flaky: failed; the batch's other markets go on" in caplog.text
    assert not (tmp_path / "runs" / ".batches").exists()  # the last try keeps nothing
    # Without tries left from the start (retries=0), a failure is final at once too.
    assert set(each_market(_batch("ok", "flaky"), _Flaky(failures=1), context=_context(1, max_tries=0))) == {"ok"}


def test_what_a_killed_try_kept_is_forgotten_at_the_end_of_the_run(tmp_path, monkeypatch):
    from include.errors import BatchRetryError
    from include.tasks import each_market, forget_batch_outcomes

    monkeypatch.setenv("RUN_ARTIFACTS_DIR", str(tmp_path / "runs"))
    with pytest.raises(BatchRetryError):
        each_market(_batch("ok", "flaky"), _Flaky(failures=1), context=_context(1))
    run = tmp_path / "runs" / ".batches" / "weekly_retrain" / "manual__2026-12-03T10:37:42+00:00"
    assert run.is_dir()
    forget_batch_outcomes("weekly_retrain", "manual__2026-12-03T10:37:42+00:00")
    assert not run.exists()
    step = _Flaky(failures=0)  # a task cleared later runs all its markets again
    assert set(each_market(_batch("ok", "flaky"), step, context=_context(2, max_tries=2))) == {"ok", "flaky"}
    assert step.calls == ["ok", "flaky"]

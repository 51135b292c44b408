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

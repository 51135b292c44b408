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

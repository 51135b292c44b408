"""Production monitoring between retrains: the prediction log, live metrics, drift, retrain requests.

:mod:`include.predictions` (the prediction log), :mod:`include.drift`
(reference bins, PSI), :mod:`include.monitoring.monitor` (one monitoring run and its policy).
"""

from include.monitoring.monitor import (
    ALERT,
    COOLDOWN,
    OK,
    RETRAIN,
    MonitorPolicy,
    mark_requested,
    monitor,
    reports,
)
from include.predictions import last_scored_bar, load_predictions, log_predictions

__all__ = ["ALERT", "COOLDOWN", "OK", "RETRAIN", "MonitorPolicy", "mark_requested", "last_scored_bar",
           "load_predictions", "log_predictions", "monitor", "reports"]

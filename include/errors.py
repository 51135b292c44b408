"""Exception hierarchy shared by every pipeline stage.

Every error the library raises on purpose derives from :class:`PipelineError`, so a task can
tell a known, explained failure from a bug. A known failure is permanent (bad input, bad
configuration, a refused promotion: a retry cannot help, so the task fails at once) unless it
is also a :class:`TransientError` (the exchange still failing after its own retries), which
Airflow retries.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error raised on purpose by the ``include`` library."""


class TransientError(PipelineError):
    """A failure that may pass on a later try (network, HTTP 5xx, rate limits): Airflow retries it."""


class BatchRetryError(TransientError):
    """Markets of a batch failed in a way a later try may mend: Airflow retries the task, whose
    next try runs only the markets that did not finish (:class:`include.batch_outcomes.BatchOutcomes`)."""


class SupersededTryError(PipelineError):
    """A later try of the same task instance has started: this try (a zombie) stops without
    running or recording anything more (:class:`include.batch_outcomes.BatchOutcomes`)."""


class ConfigError(PipelineError, ValueError):
    """A configuration value or run parameter is invalid; the message names the field."""


class SourceError(PipelineError):
    """A market-data source cannot deliver the requested series (missing file, bad format)."""


class TransientSourceError(SourceError, TransientError):
    """The source kept failing with recoverable errors (timeouts, 5xx, 429) through all its retries."""


class NoDataError(SourceError):
    """The source and the store hold no data for the run's window; a retry cannot help."""


class DataQualityError(PipelineError):
    """Market data failed its expectation suite.

    Attributes:
        report: JSON-serialisable validation report: one entry per failed expectation with its
            type, column, observed value and example rows.
        report_path: where the full report was written, if it was written.
    """

    def __init__(self, message: str, report: dict, report_path: str | None = None) -> None:
        super().__init__(message)
        self.report = report
        self.report_path = report_path


class TrainingError(PipelineError):
    """A model family could not be trained or cross-validated on the given data."""


class GateError(PipelineError):
    """The quality gate cannot reach a decision (for example, missing candidate metrics)."""


class RegistryError(PipelineError):
    """The model registry is missing a version, holds a corrupt artifact, or refused an update."""


class ServingError(PipelineError):
    """The production model cannot serve a prediction (no model, stale model, no market data)."""


class IntegrityError(RegistryError):
    """An artifact's bytes do not hash to the sha256 a trusted record holds; it was not unpickled."""


class MarketNotReadyError(PipelineError):
    """A market's history is shorter than the minimum a model needs; the run skips that market.

    Attributes:
        qualifies_on: ISO date from which the market has enough history, if known.
    """

    def __init__(self, message: str, qualifies_on: str | None = None) -> None:
        super().__init__(message)
        self.qualifies_on = qualifies_on

"""Every way an evaluation can be refused, one exception class each.

All derive from :class:`EvaluationError`; :attr:`EvaluationError.reason` is a CamelCase constant
fit for a condition's ``reason``.
"""

from __future__ import annotations

from studbook_trainer.failures import StepRefused


class EvaluationError(StepRefused):
    """Base of every refusal raised by the evaluation harness."""

    reason = "EvaluationFailed"
    """A CamelCase constant naming the failure."""


class SuiteRefusedError(EvaluationError):
    """The suite is not fit for the use asked of it (for example, a search on held-out data)."""

    reason = "SuiteRefused"


class DataLeakError(SuiteRefusedError):
    """Examples of a gate or holdout dataset also appear in a dataset a search optimizes on."""

    reason = "DataLeak"


class DatasetDigestError(EvaluationError):
    """A dataset's bytes do not hash to the digest the suite pins."""

    reason = "DatasetDigestMismatch"


class DatasetFormatError(EvaluationError):
    """A dataset cannot be read, or its records do not fit its task."""

    reason = "DatasetMalformed"


class ModelLoadError(EvaluationError):
    """A model directory cannot be loaded for the task, or lacks weights the task needs."""

    reason = "ModelLoadFailed"


class MissingWeightsError(ModelLoadError):
    """A checkpoint lacks weights the task needs, such as an encoder's missing classifier."""


class CustomTaskError(EvaluationError):
    """A user-defined task cannot be imported, or returned something the harness cannot read."""

    reason = "CustomTaskFailed"


class TaskSpecError(EvaluationError):
    """The evaluation task file is not valid."""

    reason = "TaskInvalid"

"""What the operator makes of a failed Job's container: the step's sentence, or Kubernetes' word."""

from __future__ import annotations

import pytest

from studbook.api.task import EXIT_FAILED, EXIT_REFUSED
from studbook.controllers.descendants import termination_reason

REFUSAL = "import of 'x' refused, it takes only safetensors weights: pytorch_model.bin is a pickle"


@pytest.mark.parametrize(
    ("code", "reason", "message", "expected"),
    [
        # The step's own termination message: its sentence, as it wrote it.
        (EXIT_REFUSED, "Error", REFUSAL + "\n", REFUSAL),
        (
            EXIT_FAILED,
            "Error",
            "RuntimeError: CUDA out of memory\n",
            "RuntimeError: CUDA out of memory",
        ),
        # No message written; FallbackToLogsOnError put the log tail there: its last line.
        (EXIT_FAILED, "Error", "Traceback ...\n  File x\nKeyError: 'a'\n", "KeyError: 'a'"),
        # Killed before it could write anything.
        (137, "OOMKilled", "", "exit code 137 (OOMKilled)"),
        (139, None, "loading shard 3\n", "exit code 139 (Error): loading shard 3"),
    ],
)
def test_a_failed_container_is_told_in_one_line(
    code: int, reason: str | None, message: str, expected: str
) -> None:
    assert termination_reason(code, reason, message) == expected

"""What the operator makes of a failed Job's container: the step's sentence, or Kubernetes' word."""

from __future__ import annotations

import pytest
from tests.builders import Body

from studbook.api.task import EXIT_FAILED, EXIT_REFUSED
from studbook.controllers.descendants import termination_reason
from studbook.k8s.jobs import JobSettings, job

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


def test_step_containers_fall_back_to_their_log_when_they_wrote_no_reason() -> None:
    settings = JobSettings("trainer:1", {"emptyDir": {}})
    for step in ("breed", "evaluate"):
        owner = Body.of("founder-import").set(
            "metadata.uid", "0b7c1a52-6f0e-4c5e-9d1f-3a2b1c0d9e8f"
        )
        body = job(owner.descendant(), step, 1, settings, "{}", 3600)
        (container,) = body["spec"]["template"]["spec"]["containers"]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"

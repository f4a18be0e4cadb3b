"""How a failed step leaves the trainer: whether a retry could help, and one sentence why.

A :class:`StepRefused` (a task, a file or data refused as it is: a bad configuration, an unsupported
or pickled file, unreadable data, a digest that does not match) cannot change on retry: the step
exits with :data:`studbook.api.task.EXIT_REFUSED` and the operator fails the Descendant at once.
Anything else exits 1 and is retried. The sentence goes to stderr, where the step log keeps it
with the traceback, and to the termination message, where the operator reads it: Kubernetes
shows ``/dev/termination-log`` in the pod's status, ``studbook breed`` names a file of its own in
``STUDBOOK_TERMINATION_LOG``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Final

from studbook.api.task import EXIT_FAILED, EXIT_REFUSED, TERMINATION_LOG_ENV

TERMINATION_LOG: Final = Path("/dev/termination-log")
"""Kubernetes' default ``terminationMessagePath``; written only where the kubelet mounted it."""
MAX_SENTENCE: Final = 1000
"""Characters of the reason kept: it lands in a status field of at most 1024."""


class StepRefused(Exception):
    """A failure no retry can change: the task, a file or the data is refused as it is."""


def is_permanent(error: BaseException) -> bool:
    """Whether a retry of the step cannot change the outcome."""
    from pydantic import ValidationError

    from studbook.artifacts.errors import ArtifactError, SigningError

    if isinstance(error, SigningError):  # a signer or sigstore may answer next time
        return False
    # A task that does not validate, or a package the store refuses, stays so.
    return isinstance(error, StepRefused | ValidationError | ArtifactError)


def sentence(error: BaseException) -> str:
    """The error as one line: refusals speak for themselves, anything else names its type."""
    text = " ".join(str(error).split()) or "no message"
    if not is_permanent(error):
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= MAX_SENTENCE else text[: MAX_SENTENCE - 3] + "..."


def report(error: BaseException) -> int:
    """Tell why the step failed, on stderr and in the termination message; the exit status."""
    reason = sentence(error)
    print(f"error: {reason}", file=sys.stderr)
    named = os.environ.get(TERMINATION_LOG_ENV)
    target = Path(named) if named else TERMINATION_LOG
    if named or target.exists():  # outside a pod, /dev is no place to create files in
        try:
            target.write_text(reason + "\n")
        except OSError as failure:  # the reason is in the log still
            print(f"warning: cannot write {target}: {failure}", file=sys.stderr)
    return EXIT_REFUSED if is_permanent(error) else EXIT_FAILED

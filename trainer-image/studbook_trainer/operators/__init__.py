"""The breeding operators, in a registry (:data:`OPERATORS`), each with a reference URL.

``import``, ``finetune``, ``lora``, ``distill``, ``quantize``, ``prune`` and ``merge``; each takes
a plan dataclass and a :class:`RunContext` and fills the context's output directory.
"""

from studbook_trainer.operators import compress, distill, lora, simple
from studbook_trainer.operators.base import (
    OPERATORS,
    LocalParent,
    Operator,
    OperatorError,
    RunContext,
    get_operator,
)

__all__ = [
    "OPERATORS",
    "LocalParent",
    "Operator",
    "OperatorError",
    "RunContext",
    "compress",
    "distill",
    "get_operator",
    "lora",
    "simple",
]

"""The streaming merge engine and its methods.

Public surface: :class:`MergePlan` (with :class:`MergeParent` and :class:`Override`),
:func:`merge` (files to files) and :func:`merge_state` (parents held in memory to a state dict),
the method registry :data:`METHODS` and the errors.
"""

from studbook_trainer.merge.compat import IncompatibleParentsError, check_compatible
from studbook_trainer.merge.engine import MergeReport, merge, merge_state
from studbook_trainer.merge.methods import METHODS, MergeConfigError, MergeMethod, get_method
from studbook_trainer.merge.plan import MergeParent, MergePlan, Override

__all__ = [
    "METHODS",
    "IncompatibleParentsError",
    "MergeConfigError",
    "MergeMethod",
    "MergeParent",
    "MergePlan",
    "MergeReport",
    "Override",
    "check_compatible",
    "get_method",
    "merge",
    "merge_state",
]

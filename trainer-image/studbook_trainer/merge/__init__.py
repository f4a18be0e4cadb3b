"""The streaming merge engine and its methods.

Public surface: :class:`MergePlan` (with :class:`MergeParent` and :class:`Override`),
:func:`merge`, the method registry :data:`METHODS` and the errors.
"""

from studbook_trainer.merge.compat import IncompatibleParentsError, check_compatible
from studbook_trainer.merge.engine import MergeReport, merge
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
]

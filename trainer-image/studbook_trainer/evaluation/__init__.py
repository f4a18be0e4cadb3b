"""The evaluation harness: an EvaluationSuite run against a model gives a Scorecard.

Public surface:

* :func:`evaluate` (with :class:`ModelRef` and :class:`Options`): one suite, a subject, its
  parents, baselines, the parents' ensemble and the champion, in one run;
* :func:`evaluate_task` and :class:`EvaluationTask`: the task-file entry point
  (``python -m studbook_trainer.evaluation --task task.json --out scorecard.json``);
* :func:`check_suite_for_search`, :func:`load_datasets`, :func:`bytes_digest`: data checks that
  run before any model is loaded;
* :func:`canonical_json`, :func:`suite_digest`;
* the user-defined task interface: :class:`TaskContext`, and the model protocols
  :class:`Classifier` and :class:`LanguageModel` (see :mod:`.tasks`);
* errors: :mod:`.errors`, one class per way to be refused.
"""

from studbook_trainer.evaluation.data import (
    Dataset,
    bytes_digest,
    check_leaks,
    check_suite,
    check_suite_for_search,
    load_datasets,
)
from studbook_trainer.evaluation.entrypoint import EvaluationTask, evaluate_task, main
from studbook_trainer.evaluation.errors import (
    CustomTaskError,
    DataLeakError,
    DatasetDigestError,
    DatasetFormatError,
    EvaluationError,
    MissingWeightsError,
    ModelLoadError,
    SuiteRefusedError,
    TaskSpecError,
)
from studbook_trainer.evaluation.harness import (
    ModelRef,
    Options,
    canonical_json,
    evaluate,
    suite_digest,
)
from studbook_trainer.evaluation.models import Classifier, LanguageModel
from studbook_trainer.evaluation.tasks import TaskContext

__all__ = [
    "Classifier",
    "CustomTaskError",
    "DataLeakError",
    "Dataset",
    "DatasetDigestError",
    "DatasetFormatError",
    "EvaluationError",
    "EvaluationTask",
    "LanguageModel",
    "MissingWeightsError",
    "ModelLoadError",
    "ModelRef",
    "Options",
    "SuiteRefusedError",
    "TaskContext",
    "TaskSpecError",
    "bytes_digest",
    "canonical_json",
    "check_leaks",
    "check_suite",
    "check_suite_for_search",
    "evaluate",
    "evaluate_task",
    "load_datasets",
    "main",
    "suite_digest",
]

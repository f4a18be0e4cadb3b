"""The trainer: breeding operators, the streaming merge engine and the evaluation harness.

This package runs inside the untrusted training pod (``python -m studbook_trainer``).
"""

__version__ = "0.1.0"

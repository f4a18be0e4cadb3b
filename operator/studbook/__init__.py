"""Studbook: a Kubernetes operator for model breeding.

Descendant models are created from signed parents by declared operators, evaluated on fixed
suites, signed, recorded in a lineage graph and released through a reversible promotion path.
"""

__version__ = "0.1.0"

GROUP = "breeding.studbook.dev"
"""The API group of every Studbook custom resource."""

VERSION = "v1alpha1"
"""The served and stored version of the Studbook custom resources."""

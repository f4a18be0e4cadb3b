"""Builders for Jobs and NetworkPolicies, and Kubernetes API helpers."""

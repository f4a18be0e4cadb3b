"""Builders for Jobs, InferenceServices and ConfigMaps, and Kubernetes API helpers."""

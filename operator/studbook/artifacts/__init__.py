"""Immutable content-addressed packages, their stores, signing and verification."""

"""Shared runtime for the ragline services."""

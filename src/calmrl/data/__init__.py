"""Datasets, built-in tasks and prompt formatting."""

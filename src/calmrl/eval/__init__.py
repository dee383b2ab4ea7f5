"""Evaluation: metrics and the evaluation runner."""

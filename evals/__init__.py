"""Evaluation: scenario datasets, runner, metrics and release gates (see issue #5)."""

"""Evaluation: exact distributions on enumerable problems, estimators, metrics, tables and plots."""

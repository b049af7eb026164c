"""Stages callable from bundle configs: rebalancing, metrics and plots, MLflow tracking, test
evaluation and folder prediction."""

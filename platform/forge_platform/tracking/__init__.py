"""Experiment tracking: metric loggers, the local MLflow server, campaign runs and plots."""

"""Experiment tracking: metric loggers, the local MLflow server, the job's runs and plots."""

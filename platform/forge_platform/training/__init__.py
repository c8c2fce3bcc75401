"""Training one stage: the trainer every rank runs, the checkpoint manager and files, DeepSpeed and optimizer configs, the driver side (stage_runner), failure drills."""

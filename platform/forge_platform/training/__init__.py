"""Training one stage: the trainer every rank runs, the checkpoint manager and files, the DeepSpeed
and optimizer configs, the driver side (stage_runner) and failure drills."""

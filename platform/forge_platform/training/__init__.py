"""The training engine: DeepSpeed configuration, optimizer, schedule and the per-worker loop."""

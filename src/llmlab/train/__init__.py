"""Training (survey §4.3): the one training loop (loop.py), optimisers, schedules, loss-spike handling, checkpoints,
recipes, the interim token-stream data reader, and `llmlab pretrain` (pretrain.py)."""

"""Training (survey §4.3): the training loop and learning-rate schedules."""

"""Training machinery shared by the stages: losses, schedule, metrics, validation, the loop."""

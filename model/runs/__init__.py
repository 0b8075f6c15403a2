"""What a run leaves behind: checkpoints (and what config.json holds), the run log and curve, run summaries."""

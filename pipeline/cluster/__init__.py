"""Builds and runs spread over machines: torch.distributed ranks, Slurm arrays, a Ray cluster."""

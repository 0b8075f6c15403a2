"""The GPU training step measured on the CPU: host syncs, dispatched ops, overhead floor, shapes."""

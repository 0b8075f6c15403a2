"""Shard sets: build (local, --num-jobs) and make, merge, layout and verify, tar writer, DALI index, members, text."""

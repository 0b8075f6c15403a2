"""Shard sets: build (local, --num-jobs), merge, the set's layout and verify, tar writer, DALI index, members, text files."""

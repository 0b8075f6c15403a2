"""capgen bench gpu: measure (the set, the loaders, the run, its report), train (the three training modes)."""

"""The capgen command line: one click group, its commands by kind."""

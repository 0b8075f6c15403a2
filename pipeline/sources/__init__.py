"""Annotation files -> image records: COCO captions json, Karpathy's dataset_*.json, your own captions table."""

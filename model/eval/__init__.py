"""Scoring captions: evaluate a checkpoint on a source, the metrics (BLEU, the COCO toolkit)."""

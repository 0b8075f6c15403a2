"""The embedded dataset: scenes of shapes, their captions, the image generator and the caption checker."""

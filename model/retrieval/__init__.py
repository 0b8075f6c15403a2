"""Sentence -> ranked images by log p(sentence | image): the index, its image source, search, R@K and P@1 evaluation."""

"""A trained model at work: Captioner, decoding a source, the feature cache of a frozen encoder, attention figures."""

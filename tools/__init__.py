"""Entry points, thin: parse, then call pipeline/ and model/."""

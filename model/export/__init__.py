"""A checkpoint as ONNX graphs (export, checked against torch) and the torch-free runtime that captions with them."""

"""Small, tested helpers used by the chapters of the PyTorch book."""

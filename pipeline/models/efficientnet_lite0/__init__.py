"""EfficientNet-Lite0 in Keras and the reader of its legacy PyTorch `.pth` weights: a port
kept apart so that only the stages of this conv base depend on it."""

"""Inference: image loading, face detection, alignment."""

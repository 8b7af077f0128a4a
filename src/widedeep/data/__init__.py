"""Encoded data as tensors and batches."""

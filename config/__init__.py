"""Hydra configs of sam2_encoder, importable as ``pkg://sam2_encoder.config``."""

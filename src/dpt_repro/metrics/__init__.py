"""Metrics: FID/KID with the FID Inception-v3, and classification metrics."""

"""dpt-repro: a reproducible package for Dual Pseudo Training (DPT, NeurIPS 2023)."""

__version__ = "0.1.0"

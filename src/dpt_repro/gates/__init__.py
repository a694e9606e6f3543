"""Data-quality gates (Great Expectations suites), one per hand-over between stages."""

"""Benchmark suite for transfer-learning classifiers on brain-tumour MRI."""

__version__ = "0.1.0"

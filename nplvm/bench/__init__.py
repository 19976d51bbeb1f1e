"""Benchmarks of whole models: ``python -m nplvm.bench.<name>``; each prints ratios measured in one run."""

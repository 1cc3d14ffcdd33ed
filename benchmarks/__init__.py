"""Benchmarks and the results page; run each as a module, e.g. `python -m benchmarks.reproduce`."""

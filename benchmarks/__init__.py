"""Speed benchmarks (not part of the installed package): ``python -m benchmarks.run --quick``."""

"""Side-by-side CPU benchmarks of pemnb's evaluation machinery; run them all with ``python -m benchmarks.run``."""

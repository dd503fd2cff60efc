"""The measurements behind :mod:`snakepit.benchmarking` (private; may change)."""

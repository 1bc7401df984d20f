"""Whole-path benchmarks of claude-box against bare Docker (see README.md).

Benchmarks are not tests: nothing here asserts a wall-clock time. Run them
with `.venv/bin/python -m benchmarks.run [--quick] [--profile]`.
"""

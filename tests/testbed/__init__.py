"""The test bed: a real Docker engine, an offline base image, the sandbox image.

Used by the pytest fixtures in tests/conftest.py and by benchmarks/.
"""

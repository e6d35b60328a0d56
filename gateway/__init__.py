"""Pivot gateway."""

__version__ = "0.7.0"  # the same as pyproject.toml's (tests/test_version.py)

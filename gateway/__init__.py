"""Pivot gateway."""

__version__ = "0.6.0"  # the same as pyproject.toml's (tests/test_version.py)

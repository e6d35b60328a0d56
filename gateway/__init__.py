"""Pivot gateway."""

__version__ = "0.8.2"  # the same as pyproject.toml's (tests/test_version.py)

"""Pivot gateway."""

__version__ = "0.9.0"  # the same as pyproject.toml's (tests/test_version.py)

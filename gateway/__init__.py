"""Pivot gateway."""

__version__ = "0.3.1"  # the same as pyproject.toml's (tests/test_version.py)

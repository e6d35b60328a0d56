"""Pivot gateway."""

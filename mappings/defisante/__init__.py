"""Défi Santé program data (read by gateway.defisante.config): exclusion rules, alert policy."""

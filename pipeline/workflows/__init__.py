"""Workflows that chain stages (quickstart); the only code allowed to import stages."""

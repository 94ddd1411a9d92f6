"""CLI command groups, one module per pipeline area."""

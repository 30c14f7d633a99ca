"""The `berth` operator CLI."""

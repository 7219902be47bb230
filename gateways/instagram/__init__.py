"""instagram channel."""

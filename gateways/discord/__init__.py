"""discord channel."""

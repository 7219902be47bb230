"""meta channel."""

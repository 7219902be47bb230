"""whatsapp channel."""

"""twilio channel."""

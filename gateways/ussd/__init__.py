"""ussd channel."""

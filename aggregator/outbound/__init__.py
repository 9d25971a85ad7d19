"""smsagg."""

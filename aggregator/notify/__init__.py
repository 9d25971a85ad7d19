"""What tells customers about their messages: HTTP callbacks and the SMPP receipt/MO outbox."""

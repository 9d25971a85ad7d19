"""The smsagg daemon: HTTP and SMPP in, a durable store, dispatch to operators, receipts back."""

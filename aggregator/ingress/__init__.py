"""What customers send in: HTTP API, SMPP server, the accept path, reassembly, ingress workers."""

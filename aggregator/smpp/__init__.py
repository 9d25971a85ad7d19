"""SMPP itself: session state machine, transport, statuses, header, PDU fields and builders."""

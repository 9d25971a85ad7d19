"""SMPP itself: the session state machine, its asyncio transport, raw PDU fields, query_sm."""

"""The 16-octet header every SMPP PDU starts with (SMPP 3.4 section 3.2) and the command ids it
carries: their one definition, for the session and every module that packs or reads a PDU
itself."""

from __future__ import annotations

import struct
from typing import Final

HEADER: Final = struct.Struct("!IIII")  # command_length, command_id, command_status, sequence
HEADER_LENGTH: Final = HEADER.size

# Command ids (plain ints: dict lookups on the hot path stay cheap).
GENERIC_NACK: Final = 0x80000000
BIND_RECEIVER: Final = 0x00000001
BIND_TRANSMITTER: Final = 0x00000002
SUBMIT_SM: Final = 0x00000004
DELIVER_SM: Final = 0x00000005
UNBIND: Final = 0x00000006
REPLACE_SM: Final = 0x00000007
CANCEL_SM: Final = 0x00000008
BIND_TRANSCEIVER: Final = 0x00000009
ENQUIRE_LINK: Final = 0x00000015
SUBMIT_MULTI: Final = 0x00000021
ALERT_NOTIFICATION: Final = 0x00000102
DATA_SM: Final = 0x00000103
RESP_BIT: Final = 0x80000000

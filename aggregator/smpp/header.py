"""The 16-octet header every SMPP PDU starts with (SMPP 3.4 section 3.2): its one definition, for
the session and every module that packs or reads a PDU itself."""

from __future__ import annotations

import struct
from typing import Final

HEADER: Final = struct.Struct("!IIII")  # command_length, command_id, command_status, sequence
HEADER_LENGTH: Final = HEADER.size

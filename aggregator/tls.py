"""TLS contexts: the HTTPS listener's ([http] tls_cert / tls_key), the simulator SMSC's, and the
outbound SMPP binds' ([[providers]] tls = true).

Every file problem is a TlsFileError naming the file and which one it is (certificate, key or
CA), never a raw ``ssl`` traceback. Key material is only handed to OpenSSL: no message here ever
contains the content of a file.
"""

from __future__ import annotations

import ssl
from typing import Final, Literal

__all__ = ["MIN_VERSION", "TlsFileError", "check_ca", "client_context", "server_context"]

MIN_VERSION: Final = ssl.TLSVersion.TLSv1_2

Which = Literal["cert", "key", "ca"]


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; ``which`` says which of the three."""

    def __init__(self, which: Which, message: str) -> None:
        super().__init__(message)
        self.which: Which = which


class _Encrypted(Exception):
    """Raised from the passphrase callback: OpenSSL would otherwise prompt on the terminal."""


def _no_passphrase() -> str:
    raise _Encrypted


def _check_readable(path: str, which: Which) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TlsFileError(which, f"cannot read {path!r}: {exc.strerror or exc}") from None


def _load_certificates(ctx: ssl.SSLContext, path: str, which: Which) -> None:
    """Load every PEM certificate of ``path`` as trusted; raises TlsFileError if it has none."""
    _check_readable(path, which)
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError):
        raise TlsFileError(which, f"{path!r} holds no PEM certificate") from None
    except OSError as exc:
        raise TlsFileError(which, f"cannot read {path!r}: {exc.strerror or exc}") from None
    if not ctx.cert_store_stats().get("x509"):  # e.g. a file with only a CRL
        raise TlsFileError(which, f"{path!r} holds no PEM certificate")


def check_ca(path: str) -> None:
    """Raise TlsFileError unless ``path`` holds at least one PEM certificate."""
    _load_certificates(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), path, "ca")


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later) from a PEM certificate chain and its unencrypted PEM
    private key; raises TlsFileError naming the file at fault."""
    # The certificate file first, on its own: load_cert_chain's errors do not say which file.
    _load_certificates(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, "cert")
    _check_readable(key, "key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    try:
        ctx.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise TlsFileError(
            "key", f"{key!r} is encrypted with a passphrase; an unencrypted key is needed"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            message = f"{key!r} is not the private key of the certificate in {cert!r}"
        else:
            message = f"{key!r} holds no PEM private key"
        raise TlsFileError("key", message) from None
    except OSError as exc:
        raise TlsFileError("key", f"cannot read {key!r}: {exc.strerror or exc}") from None
    return ctx


def client_context(*, ca: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client context (TLS 1.2 or later). ``verify``: the server's certificate must chain to
    ``ca`` (a PEM file; None: the system trust store) and name the host; False checks nothing
    (lab use only). Raises TlsFileError for a bad ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MIN_VERSION
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        _load_certificates(ctx, ca, "ca")
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx

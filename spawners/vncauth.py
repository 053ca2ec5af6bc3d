"""VNC authentication (DES as VNC uses it): answering challenges, writing password files."""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes


def _des(key: bytes) -> Cipher[modes.ECB]:
    # VNC uses single DES with each key byte's bits reversed; 3DES with one key is DES.
    reversed_key = bytes(int(f"{b:08b}"[::-1], 2) for b in key.ljust(8, b"\0")[:8])
    return Cipher(TripleDES(reversed_key * 3), modes.ECB())


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The answer to a VncAuth challenge (16 bytes)."""
    encryptor = _des(password.encode("latin-1")).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


_PASSWD_KEY = bytes([23, 82, 107, 6, 35, 78, 88, 7])


def vnc_password_file(password: str) -> bytes:
    """The content of a TigerVNC ``-PasswordFile`` (as `vncpasswd -f` writes it)."""
    # The same DES as the challenge, keyed with VNC's fixed obfuscation key.
    encryptor = _des(_PASSWD_KEY).encryptor()
    return encryptor.update(password.encode("latin-1").ljust(8, b"\0")[:8]) + encryptor.finalize()

"""JupyterLab identity provider for Atrium sessions (runs inside the session, not the portal).

Atrium's proxy authenticates people and then adds ``Authorization: token <secret>`` to each
request it forwards. With JupyterLab's own token setting, that token would also be written
into every page's ``page_config`` and so reach the browser; this provider keeps the secret
out of JupyterLab's settings (its ``token`` is empty) and checks the header itself.

Enable with ``--ServerApp.identity_provider_class=images.jupyter_identity.AtriumIdentityProvider``
and the secret in the environment variable ``ATRIUM_SESSION_TOKEN``, or in a file named by
``ATRIUM_SESSION_TOKEN_FILE`` (one accepted token per line). The file is read again whenever
it changes, so Atrium can rotate the token without restarting the session (it writes the
new token and, for a moment, the old one too). Every image that runs JupyterLab for Atrium
(local profile, pod image, VM boot) installs this module.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, User


class AtriumIdentityProvider(IdentityProvider):
    """Accepts only requests carrying the session secret, as sent by Atrium's proxy."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._secret = os.environ.get("ATRIUM_SESSION_TOKEN", "")
        self._file = os.environ.get("ATRIUM_SESSION_TOKEN_FILE", "")
        self._stamp: tuple[int, int, int] | None = None
        self._accepted: list[bytes] = []
        if not self._file and not self._secret:
            raise RuntimeError("ATRIUM_SESSION_TOKEN is empty: refusing to serve without auth")
        if self._file:
            if not self._tokens():
                raise RuntimeError(f"{self._file} holds no token: refusing to serve without "
                                   "auth")
            os.environ.pop("ATRIUM_SESSION_TOKEN", None)  # kernels need not inherit it
        self._user = User(username=os.environ.get("USER", "atrium"))
        self.token = ""  # nothing to leak into page_config

    @property
    def auth_enabled(self) -> bool:
        return True

    @property
    def login_available(self) -> bool:
        return False

    def _tokens(self) -> list[bytes]:
        """The accepted tokens: the file's lines (re-read when it changed), else the env's."""
        if not self._file:
            return [self._secret.encode()]
        try:
            st = os.stat(self._file)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self._file, "rb") as f:
                    self._accepted = [t.strip() for t in f.read().splitlines() if t.strip()]
                self._stamp = stamp
        except OSError:
            self._accepted, self._stamp = [], None  # no file: nobody gets in
        return self._accepted

    def get_user(self, handler: Any) -> User | None:
        header = handler.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        given = value.strip().encode()
        if scheme.lower() in ("token", "bearer") and given and any(
            hmac.compare_digest(given, token) for token in self._tokens()
        ):
            # Token-authenticated requests skip JupyterLab's XSRF and origin checks; the
            # proxy in front checks origins and XSRF for the browser.
            handler._token_authenticated = True
            return self._user
        return None

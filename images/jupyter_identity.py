"""JupyterLab identity provider for Atrium sessions (runs inside the session, not the portal).

Atrium's proxy authenticates people and then adds ``Authorization: token <secret>`` to each
request it forwards. With JupyterLab's own token setting, that token would also be written
into every page's ``page_config`` and so reach the browser; this provider keeps the secret
out of JupyterLab's settings (its ``token`` is empty) and checks the header itself.

Enable with ``--ServerApp.identity_provider_class=images.jupyter_identity.AtriumIdentityProvider``
and the secret in the environment variable ``ATRIUM_SESSION_TOKEN``. Every image that runs
JupyterLab for Atrium (local profile, pod image, VM boot) installs this module.
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
        if not self._secret:
            raise RuntimeError("ATRIUM_SESSION_TOKEN is empty: refusing to serve without auth")
        self._user = User(username=os.environ.get("USER", "atrium"))
        self.token = ""  # nothing to leak into page_config

    @property
    def auth_enabled(self) -> bool:
        return True

    @property
    def login_available(self) -> bool:
        return False

    def get_user(self, handler: Any) -> User | None:
        header = handler.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("token", "bearer") and hmac.compare_digest(
            value.strip().encode(), self._secret.encode()
        ):
            # Token-authenticated requests skip JupyterLab's XSRF and origin checks; the
            # proxy in front checks origins and XSRF for the browser.
            handler._token_authenticated = True
            return self._user
        return None

"""The test OpenID Connect provider: npm ``oidc-provider`` on a loopback port.

:func:`install` runs ``install.sh`` (idempotent; the packages live in a cache dir outside
the repo) and :class:`OidcProvider` runs ``provider.mjs`` with test users, clients and a
signing key generated here, so tests know the provider's key as well as its behaviour.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from joserfc.jwk import RSAKey

HERE = Path(__file__).resolve().parent


class ProviderUnavailable(Exception):
    """The provider could not be installed or started (the message says why)."""


def install() -> Path:
    """Install the provider's packages (once per package-lock) and return node_modules."""
    try:
        result = subprocess.run(["bash", str(HERE / "install.sh")], capture_output=True,
                                text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ProviderUnavailable(f"install.sh failed: {err}") from None
    if result.returncode != 0:
        raise ProviderUnavailable(f"install.sh failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class ProviderUser:
    username: str
    password: str
    name: str
    email: str
    groups: list[str] = field(default_factory=list)
    sub: str = ""
    disabled: bool = False  # an account disabled at the provider (deprovisioned)

    def __post_init__(self) -> None:
        # An opaque subject, unlike the username, as real providers issue.
        self.sub = self.sub or f"sub-{secrets.token_hex(6)}"


@dataclass
class ProviderClient:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    backchannel_logout_uri: str = ""

    def as_json(self) -> dict[str, Any]:
        client: dict[str, Any] = {
            "client_id": self.client_id, "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic"}
        if self.backchannel_logout_uri:
            client.update(backchannel_logout_uri=self.backchannel_logout_uri,
                          backchannel_logout_session_required=True)
        return client


class OidcProvider:
    """``node provider.mjs`` on ``port``; :meth:`stop` ends it."""

    def __init__(self, modules: Path, workdir: Path, port: int,
                 users: list[ProviderUser], clients: list[ProviderClient]) -> None:
        self.modules = modules
        self.workdir = workdir
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.users = {u.username: u for u in users}
        self.clients = clients
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key-1", "alg": "RS256",
                                                         "use": "sig"})
        self.proc: subprocess.Popen[str] | None = None
        self.log = workdir / "provider.log"

    def start(self, timeout: float = 30) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "provider.json"
        config.write_text(json.dumps({
            "issuer": self.issuer, "port": self.port,
            "jwks": {"keys": [self.key.as_dict(private=True)]},
            "clients": [c.as_json() for c in self.clients],
            "users": [vars(u) for u in self.users.values()],
        }))
        config.chmod(0o600)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "ATRIUM_OIDC_MODULES": str(self.modules),
               "NODE_NO_WARNINGS": "1"}
        try:
            self.proc = subprocess.Popen(["node", str(HERE / "provider.mjs"), str(config)],
                                         env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
        except OSError as err:
            raise ProviderUnavailable(f"cannot run node: {err}") from None
        assert self.proc.stdout is not None
        ready = threading.Event()
        lines: list[str] = []

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            with open(self.log, "a") as log:
                for line in self.proc.stdout:
                    lines.append(line)
                    log.write(line)
                    log.flush()
                    if line.startswith("READY"):
                        ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ProviderUnavailable("the OIDC provider did not start:\n"
                                          + "".join(lines)[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # --- test controls ------------------------------------------------------------------

    def tamper(self, *, set: dict[str, Any] | None = None, unset: list[str] | None = None,
               sign: str = "provider", replay: bool = False) -> None:
        """Make the NEXT login's token response carry a changed ID token (see provider.mjs;
        refresh grants, e.g. Atrium's background provider checks, are left alone)."""
        body = {"set": set or {}, "unset": unset or [], "sign": sign, "replay": replay}
        httpx.post(f"{self.issuer}/test/tamper", json=body, timeout=10).raise_for_status()

    def backchannel(self, enabled: bool) -> None:
        """Send back-channel logouts to the clients (the default) or not."""
        httpx.post(f"{self.issuer}/test/backchannel", json={"enabled": enabled},
                   timeout=10).raise_for_status()

    def update_user(self, username: str, **claims: Any) -> None:
        """Change ``name``, ``email``, ``groups`` or ``disabled`` of a user at the provider.

        A disabled user cannot sign in, and the provider refuses their refresh tokens with
        ``invalid_grant`` / "User disabled", as Keycloak does."""
        httpx.post(f"{self.issuer}/test/users/{username}", json=claims,
                   timeout=10).raise_for_status()
        for k, v in claims.items():
            setattr(self.users[username], k, v)

"""MQTT client ids nobody else can name.

Mosquitto 2.0 keys sessions by client id and cannot bind a client id to a certificate in its ACL: any
client whose certificate the broker accepts may connect under any id, which kicks the connection of that
id off and hands its persistent session (with the messages queued for it) to the newcomer. So the ids of
our connections are unguessable: ``<identity>-<secret>`` (the agent, the central's content connection)
and that plus a role suffix (``-uplink``, ``-api``, ``-w-<worker name>``), where the secret is 80 random
bits made once per identity and kept beside its keys (station: ``<store_dir>/mqtt-client.secret``;
central: ``identity/mqtt-client.secret``). Command-line connections use a fresh random id each time.

The same helper keeps the station's telemetry salt (:func:`load_or_create_hex_secret`, 32 random bytes in
``<store_dir>/mqtt-telemetry.salt``): the HMAC key of the device ids telemetry publishes
(edge.mqtt.telemetry).

The full id is never logged (`loggable_client_id`): whoever learns it (the broker's administrator, its
logs) can still take the session over; EMQX can enforce client id = certificate CN with an authorization
rule, Mosquitto cannot (README "Broker setup").
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from edge.durable.files import ensure_private_dir
from edge.pki.certs import PRIVATE_MODE, install_file, read_pem
from edge.pki.names import IdentityError

SECRET_HEX_DIGITS = 20  # 80 bits
# A run this long of hex digits in a client id is taken for a secret and shortened in logs.
_SECRET_LIKE = re.compile(r"[0-9a-fA-F]{12,}")


def load_or_create_hex_secret(
    path: Path, *, hex_digits: int, what: str, if_removed: str, create: bool = True
) -> str | None:
    """The random secret of `hex_digits` lowercase hex digits kept in `path` (mode 0600, its directory
    private), made on first use; None when it is missing and not `create`. Raises `IdentityError` for a
    file that is not such a secret, or is readable by others (never replaced: what was made under it
    depends on it; `if_removed` says what removing it costs). `what` names it in messages."""
    if not path.exists():
        if not create:
            return None
        # link(): two processes starting at once agree on whichever secret was written first.
        try:
            ensure_private_dir(path.parent)
            install_file(path, (secrets.token_hex(hex_digits // 2) + "\n").encode("ascii"),
                         PRIVATE_MODE, replace=False)
        except OSError as exc:
            raise IdentityError(f"cannot keep the {what} in {path}: {exc.strerror or exc}") from None
    text = read_pem(path, secret=True).decode("ascii", errors="replace").strip()
    if not re.fullmatch(rf"[0-9a-f]{{{hex_digits}}}", text):
        raise IdentityError(f"{path}: not an {what} ({hex_digits} hex digits); remove it to make a new one "
                            f"({if_removed})")
    return text


def load_or_create_client_secret(path: Path, *, create: bool = True) -> str | None:
    """The client secret kept in `path` (see :func:`load_or_create_hex_secret`)."""
    return load_or_create_hex_secret(
        path, hex_digits=SECRET_HEX_DIGITS, what="MQTT client secret", create=create,
        if_removed="the broker's sessions of the old id are then abandoned")


def secret_client_id(identity: str, secret: str) -> str:
    return f"{identity}-{secret}"


def fresh_client_id(identity: str, role: str) -> str:
    """A one-time id for a command-line connection (with a clean session)."""
    return f"{identity}-{role}-{secrets.token_hex(SECRET_HEX_DIGITS // 2)}"


def loggable_client_id(client_id: str) -> str:
    """`client_id` with every secret-like run of hex digits cut to its first 4: safe for logs."""
    return _SECRET_LIKE.sub(lambda match: f"{match.group(0)[:4]}…", client_id)

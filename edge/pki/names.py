"""Who a certificate says its holder is: the roles (OU) and names (CN) the central issues, and the one
rule station ids and reader names follow.

Who is who is decided by certificates from the central's own CA only: a station is a client
certificate with subject OU=station and CN=<station id>, an auditor one with OU=auditor and CN=<name>.
"""

from __future__ import annotations

import re
from collections.abc import Callable

STATION_OU = "station"
AUDITOR_OU = "auditor"
SERVER_OU = "server"
# The central's own client certificate on the MQTT broker (edge.central.broker_identity).
CENTRAL_OU = "central"
ORGANIZATION = "evidence-edge"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class IdentityError(Exception):
    """Identity files are missing, unsafe or inconsistent, or a certificate cannot be issued."""


class PeerIdentityError(IdentityError):
    """A TLS peer certificate does not name exactly one role (OU) and one identity (CN)."""


class InvalidNameError(ValueError):
    """A station id or reader name outside the one rule."""


def _validated_name(name: object, what: str) -> str:
    """The one rule for names in certificates: 1-64 of ``[A-Za-z0-9._-]``, starting alphanumeric."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"expected {what} of 1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or "
            f"digit, found {str(name)[:80]!r}"
        )
    return name


def validate_station_id(station_id: object) -> str:
    """The one place station ids are checked (`_validated_name`)."""
    return _validated_name(station_id, "a station id")


def validate_reader_name(name: object) -> str:
    """Reader (auditor) names follow the station id rules."""
    return _validated_name(name, "a reader name")


def checked_name(
    validate: Callable[[object], str], name: object, error: type[Exception] = IdentityError
) -> str:
    """A name validated, with the error type the caller's layer uses."""
    try:
        return validate(name)
    except InvalidNameError as exc:
        raise error(str(exc)) from None

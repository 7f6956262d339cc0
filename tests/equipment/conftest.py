"""Fixtures: the simulated recorder bus of the USB tests (a real pyusb backend over a UNIX socket), and each
backend of the central's database in turn (the central's officer list and fleet run on both)."""

from __future__ import annotations

from tests.central.conftest import central_index
from tests.central.pg import pg_database, pg_server
from tests.usb.conftest import private_media_cache, sim

__all__ = ["central_index", "pg_database", "pg_server", "private_media_cache", "sim"]

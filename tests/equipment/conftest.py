"""Fixtures: the simulated recorder bus of the USB tests (a real pyusb backend over a UNIX socket)."""

from __future__ import annotations

from tests.usb.conftest import private_media_cache, sim

__all__ = ["private_media_cache", "sim"]

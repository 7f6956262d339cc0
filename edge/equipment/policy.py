"""The check-out desk's policy from a station's `[equipment]` configuration."""

from __future__ import annotations

from drivers.usb.protocol import RecorderSettings
from edge.config.station import EquipmentSection
from edge.equipment.checkout import CheckoutPolicy

__all__ = ["checkout_policy"]


def checkout_policy(section: EquipmentSection) -> CheckoutPolicy:
    settings = section.settings
    return CheckoutPolicy(
        min_battery_percent=section.min_battery_percent,
        pin_failures_max=section.pin_failures_max,
        pin_lockout_s=section.pin_lockout_s,
        settings=None if settings is None else RecorderSettings(
            width=settings.width, height=settings.height, pre_record_s=settings.pre_record_s,
            post_record_s=settings.post_record_s, split_min=settings.split_min),
    )

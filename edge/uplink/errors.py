"""Errors that stop the whole uplink, not one item."""

from __future__ import annotations


class UplinkFatal(Exception):
    """The central's record of this station's ledger, or its log, disagrees with what it signed before
    (a fork, a rewritten log): uploading stops until a human looks; the supervisor reports it."""

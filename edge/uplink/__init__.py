"""The station uplink: drains the spool to the central receiver and checks its receipts."""

"""Device and wire protocols. Never imports `edge`."""

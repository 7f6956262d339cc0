"""Certificates, enrollment bundles and TLS contexts, shared by the station and the central: the
station reads its bundle and connects with it here without importing the central."""

"""USB body-worn recorders: volumes, docking sessions, and the offload (a source of the ingest pipeline)."""

"""Where evidence comes from: each source offers items to the ingest pipeline (edge.ingest.source)."""

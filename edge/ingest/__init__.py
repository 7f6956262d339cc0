"""The one ingest pipeline every source feeds (see pipeline.py) and the store it writes."""

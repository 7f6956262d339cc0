"""evidence-edge: the edge evidence service."""

"""Configuration files: the shared strict-model base and the station's file (the central's is in
`edge.central.config`)."""

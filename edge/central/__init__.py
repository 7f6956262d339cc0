"""The central receiver: tus uploads, registration, object store, index, Merkle log, read side."""

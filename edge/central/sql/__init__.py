"""SQL shared by the central's two backends (:mod:`edge.central.sqlite`, :mod:`edge.central.postgres`):
the index (:mod:`.index`), the console's store (:mod:`.console`) and the agency's equipment records
(:mod:`.equipment`), written once in the ``?`` dialect both engines read alike. Only the backends use it."""

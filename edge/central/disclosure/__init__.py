"""What the auditor console offers beyond single reads: the disclosure package of a case (一案一包), the
statistics (统计分析) and the periodic spot checks (案卷抽查), with their pages.

The package layout and its checks are pure (:mod:`edge.custody.disclosure`); this package reads the
index for them (:mod:`.package`), writes the verification page (:mod:`.page`), decides who may see what
(:mod:`.access`) and serves it (:mod:`.routes`, hooked into the application by
:func:`edge.central.disclosure.routes.add_audit_routes`).
"""

"""The auditor's console at the central (issue 8 §5), for legal reviewers and supervisors.

* :mod:`.scope`: the one seam every read of evidence goes through (who reads; what their role, units and
  the sensitive markings let them see), used by the console, by ``/v1/items`` and by the disclosure
  package;
* :mod:`.credentials`: argon2id password hashes and TOTP second factors (argon2-cffi, pyotp);
* :mod:`.sessions`: sessions kept in the index by token hash (they survive a restart), with idle and
  absolute expiry, and their CSRF tokens;
* :mod:`.secret_key`: ``identity/console.key``, which seals the TOTP secrets at rest and keys the seals of
  the console's append-only trails;
* :mod:`.admin`: ``edge central account|grant|station-unit|sensitive``.
"""

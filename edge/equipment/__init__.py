"""Equipment issue and return (领用/归还) at the docking station: the officers who may take a recorder, their
credentials, and the station's own record of who held which recorder when.

- :mod:`.officers`: the officer registry (警号, name, unit, status, card UID, PIN hash) in the station store;
- :mod:`.credentials`: card UIDs normalised, PINs hashed with argon2id;
- :mod:`.officer_csv`: the strict reader of an agency's officer list (CSV), every problem with its line;
- :mod:`.importing`: an import as one transaction with its ledger entry (counts and a digest, never PINs);
- :mod:`.assignments`: check-out and check-in records, the PIN lockout;
- :mod:`.checkout`: the check-out desk: who asks, which recorder is ready, the identity written to it;
- :mod:`.usb_recorders`: the check-out desk's recorders reached through the USB control protocol;
- :mod:`.policy`: the desk's policy (battery, PIN lockout, recorder settings) from `[equipment]`;
- :mod:`.card_desk`: the serial card reader serving the desk;
- :mod:`.binding`: the `assignment` block of an offloaded item's manifest (who held the recorder);
- :mod:`.fleet`: the fleet view (every recorder known here: in a bay, out, overdue, faulty) and its JSON;
- :mod:`.fleet_records`: the station's records the fleet view is built from, read from state.db;
- :mod:`.overdue`: one `overdue` alert per assignment out too long, closed by the return;
- :mod:`.fleet_monitor`: the agent's supervised fleet task (alerts, the view, the metrics);
- :mod:`.cli`: `edge officers import|list|suspend|activate`.

The station's record, not what a recorder claims, says who held a recorder: the identity a recorder
reports (GetZFYInfo) is a claim that the station compares against its assignments.
"""

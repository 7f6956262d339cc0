-- Object-lock extensions the object store has not confirmed yet (edge/central/sql/lock_extensions.py;
-- edge/central/sqlite/lock_extensions.py has the same table). A work queue, not history: a row is
-- written with the ledger entry that changed an item's retention class, updated on each failed attempt,
-- and deleted once the bucket confirms the lock.
CREATE TABLE lock_extensions_pending (
    item text PRIMARY KEY,
    sha256 text NOT NULL,
    until_utc text NOT NULL,           -- fixed-width UTC text: text order is time order
    legal_hold integer NOT NULL CHECK (legal_hold IN (0, 1)),
    requested_utc text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_attempt_utc text,
    last_error text
);

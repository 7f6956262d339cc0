-- tus uploads shared by every receiver (edge/central/tus_shared_store.py): one row per upload and one per
-- committed part, whose bytes are an object in the bucket (uploads/<upload_id>/<part>). This is working
-- state, not evidence: rows are updated while the upload grows and deleted when it is registered,
-- terminated or purged, so none of the append-only rules of the index applies here.
CREATE TABLE tus_uploads (
    upload_id text PRIMARY KEY CHECK (upload_id ~ '^[0-9a-f]{32}$'),
    station text NOT NULL CHECK (station <> ''),
    length bigint NOT NULL CHECK (length >= 0),
    -- The committed offset: the bytes of the committed parts, never more.
    committed bigint NOT NULL DEFAULT 0 CHECK (committed >= 0 AND committed <= length),
    metadata text NOT NULL,            -- canonical JSON object of strings (Upload-Metadata)
    created timestamptz NOT NULL,
    expires timestamptz NOT NULL,
    -- SHA-256 of the whole content: set exactly when the upload is complete.
    sha256 text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- A registration took the complete content until then: the purge leaves it alone.
    leased_until timestamptz,
    CHECK ((committed = length) = (sha256 IS NOT NULL))
);
CREATE INDEX tus_uploads_by_station ON tus_uploads (station);
CREATE INDEX tus_uploads_by_expiry ON tus_uploads (expires);

CREATE TABLE tus_upload_parts (
    upload_id text NOT NULL REFERENCES tus_uploads (upload_id) ON DELETE CASCADE,
    part integer NOT NULL CHECK (part >= 1),
    start_offset bigint NOT NULL CHECK (start_offset >= 0),
    size bigint NOT NULL CHECK (size > 0),
    version_id text NOT NULL,          -- the part object's version in the bucket (versions never change)
    PRIMARY KEY (upload_id, part)
);

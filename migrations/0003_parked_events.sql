-- Events the projector could not apply, and the streams they hold (the read side's poison
-- policy). Kept here, not in the read model: the read model is disposable (a rebuild drops it)
-- and every replica's projector must see the same holds after a fail-over.

-- A stream is held from its first event that could not be applied: that event and every later
-- one of the stream are parked until an operator retries or skips them.
CREATE TABLE held_streams (
    stream_type  text        NOT NULL,
    stream_id    text        NOT NULL,
    held_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT held_streams_pkey PRIMARY KEY (stream_type, stream_id)
);

-- One row per parked event. The culprit carries its error; the events parked behind it carry
-- error_class 'Held' and name the position that holds them.
CREATE TABLE parked_events (
    position         bigint      NOT NULL,
    stream_type      text        NOT NULL,
    stream_id        text        NOT NULL,
    type             text        NOT NULL,
    error_class      text        NOT NULL,
    error            text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_failed_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT parked_events_pkey PRIMARY KEY (position),
    -- parking takes a key-share lock on the hold, so a release (which locks it for update)
    -- and a parking of the same stream never interleave
    CONSTRAINT parked_events_stream_fkey FOREIGN KEY (stream_type, stream_id)
        REFERENCES held_streams (stream_type, stream_id) ON DELETE CASCADE
);

CREATE INDEX parked_events_stream_idx ON parked_events (stream_type, stream_id, position);

-- What happened to parked events: parked, retried, applied, skipped; never updated.
CREATE TABLE parked_audit (
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    at           timestamptz NOT NULL DEFAULT now(),
    action       text        NOT NULL,
    position     bigint,
    stream_type  text        NOT NULL,
    stream_id    text        NOT NULL,
    detail       text        NOT NULL DEFAULT '',
    CONSTRAINT parked_audit_pkey PRIMARY KEY (id),
    CONSTRAINT parked_audit_action_check
        CHECK (action IN ('parked', 'retried', 'applied', 'skipped'))
);

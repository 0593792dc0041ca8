-- The relay's checkpoint per relay name: the highest position published to the broker with
-- every predecessor confirmed. A restarted relay republishes from here (duplicates, never loss).

CREATE TABLE relay_checkpoints (
    name        text        NOT NULL,
    position    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT relay_checkpoints_pkey PRIMARY KEY (name),
    CONSTRAINT relay_checkpoints_position_check CHECK (position >= 0)
);

-- The write side: products, orders, the event log (transactional outbox), idempotency keys.

CREATE TABLE products (
    product_id   uuid        NOT NULL,
    sku          text        NOT NULL,
    name         text        NOT NULL,
    price_cents  bigint      NOT NULL,
    stock        bigint      NOT NULL,
    version      integer     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_pkey PRIMARY KEY (product_id),
    CONSTRAINT products_sku_key UNIQUE (sku),
    CONSTRAINT products_price_cents_check CHECK (price_cents >= 0),
    CONSTRAINT products_stock_check CHECK (stock >= 0),
    CONSTRAINT products_version_check CHECK (version >= 1)
);

CREATE TABLE orders (
    order_id     uuid        NOT NULL,
    customer_id  text        NOT NULL,
    status       text        NOT NULL,
    total_cents  bigint      NOT NULL,
    version      integer     NOT NULL,
    placed_at    timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_pkey PRIMARY KEY (order_id),
    CONSTRAINT orders_status_check CHECK (status IN ('placed', 'paid', 'shipped', 'cancelled')),
    CONSTRAINT orders_total_cents_check CHECK (total_cents >= 0),
    CONSTRAINT orders_version_check CHECK (version >= 1)
);

CREATE INDEX orders_customer_id_placed_at_idx ON orders (customer_id, placed_at DESC);

CREATE TABLE order_lines (
    order_id          uuid    NOT NULL,
    line_no           integer NOT NULL,
    product_id        uuid    NOT NULL,
    quantity          integer NOT NULL,
    unit_price_cents  bigint  NOT NULL,
    CONSTRAINT order_lines_pkey PRIMARY KEY (order_id, line_no),
    CONSTRAINT order_lines_order_id_fkey FOREIGN KEY (order_id) REFERENCES orders (order_id),
    CONSTRAINT order_lines_product_id_fkey FOREIGN KEY (product_id) REFERENCES products (product_id),
    CONSTRAINT order_lines_quantity_check CHECK (quantity >= 1)
);

CREATE INDEX order_lines_product_id_idx ON order_lines (product_id);

-- The event log. `position` is the global order, drawn by a trigger that takes the transaction
-- id *before* it draws from the sequence, whatever the writer supplied: no writer can hold a
-- position while being invisible in a snapshot, so the relay decides "could this gap still be
-- filled?" from snapshots alone (DESIGN §4). CACHE 1 keeps positions drawn in time order across
-- sessions. The log is append-only: updates and deletes are refused.
CREATE SEQUENCE events_position_seq AS bigint CACHE 1;

CREATE TABLE events (
    position        bigint      NOT NULL,
    event_id        uuid        NOT NULL DEFAULT gen_random_uuid(),
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  integer     NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL DEFAULT 1,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_type, stream_id, stream_version),
    CONSTRAINT events_stream_type_check CHECK (stream_type IN ('order', 'product')),
    CONSTRAINT events_stream_version_check CHECK (stream_version >= 1)
);

ALTER SEQUENCE events_position_seq OWNED BY events.position;

CREATE FUNCTION events_assign_position() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_current_xact_id();
    NEW.position := nextval('events_position_seq');
    RETURN NEW;
END
$$;

CREATE TRIGGER events_assign_position_trg
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_assign_position();

CREATE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only'
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_append_only_trg
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

CREATE TABLE idempotency_keys (
    key            text        NOT NULL,
    fingerprint    text        NOT NULL,
    status         integer,
    headers        jsonb,
    body           bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (key)
);

CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

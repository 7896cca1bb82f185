-- Retries and dead letters: operational state, not facts. A command's outcome is still its one
-- event in the event store; these rows say where a command that failed transiently is now.

-- Each attempt of a command (its error and when the next one is due), for the lifecycle API.
ALTER TABLE command_log ADD COLUMN IF NOT EXISTS state text;  -- retrying | dead_lettered
ALTER TABLE command_log ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz;
ALTER TABLE command_log ADD COLUMN IF NOT EXISTS attempt_history jsonb NOT NULL DEFAULT '[]';

-- Aggregates parked behind a command in the retry path: while a key has rows here, later
-- commands for it follow the first one (lowest seq) through the retry topic, in order.
CREATE TABLE IF NOT EXISTS command_parking (
    context       text NOT NULL,
    aggregate_key text NOT NULL,
    command_id    uuid NOT NULL,
    seq           bigserial,
    parked_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (context, aggregate_key, command_id)
);
CREATE INDEX IF NOT EXISTS command_parking_order_idx ON command_parking (context, aggregate_key, seq);

-- The index of <topic>.dlq: a topic cannot be listed by time or purged by age. The record's
-- key and value are kept so that a redrive needs no seek into the dead-letter topic.
CREATE TABLE IF NOT EXISTS dead_letters (
    id               uuid PRIMARY KEY,
    command_id       uuid NOT NULL,
    context          text NOT NULL,
    command_type     text NOT NULL,
    topic            text NOT NULL,   -- the original topic
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL,
    dlq_topic        text NOT NULL,
    dlq_partition    integer,
    dlq_offset       bigint,
    record_key       bytea,
    record_value     bytea NOT NULL,
    headers          jsonb NOT NULL DEFAULT '{}',
    error_type       text NOT NULL,
    error_message    text NOT NULL,
    traceback_digest text NOT NULL,
    traceback        text NOT NULL DEFAULT '',
    attempts         integer NOT NULL,
    first_failure_at timestamptz NOT NULL,
    last_failure_at  timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    redriven_at      timestamptz
);
-- At most one open (not redriven) dead letter per command: a redelivered batch indexes it once.
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_open_idx ON dead_letters (command_id)
    WHERE redriven_at IS NULL;
CREATE INDEX IF NOT EXISTS dead_letters_time_idx ON dead_letters (dead_lettered_at);
CREATE INDEX IF NOT EXISTS dead_letters_topic_idx ON dead_letters (topic, dead_lettered_at);

-- Operational state of commands in flight, written outside the event store: by the ingress
-- when it accepts a command and by workers when they start one. Outcomes are NOT kept here;
-- they are events, projected into command_outcomes.
CREATE TABLE IF NOT EXISTS command_log (
    command_id   uuid PRIMARY KEY,
    context      text NOT NULL,
    command_type text NOT NULL,
    accepted_at  timestamptz NOT NULL,
    started_at   timestamptz,   -- first attempt
    last_attempt_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    kafka_partition integer,
    kafka_offset    bigint
);
CREATE INDEX IF NOT EXISTS command_log_accepted_idx ON command_log (accepted_at);

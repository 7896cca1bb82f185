-- Operational state of each projection: running, paused by an operator, or failed on an event
-- (stopped there until retried: an event is never skipped silently). Also which code version the
-- live tables were built with, and the retired tables of the last blue/green swap (for rollback).
CREATE TABLE IF NOT EXISTS projection_state (
    name              text PRIMARY KEY,
    state             text NOT NULL DEFAULT 'running'
                      CHECK (state IN ('running', 'paused', 'failed')),
    error             text,
    failed_position   bigint,
    failed_event_type text,
    live_version      integer,
    previous_schema   text,
    previous_position bigint,
    previous_version  integer,
    swapped_at        timestamptz,
    rebuild_schema    text,
    rebuild_version   integer,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

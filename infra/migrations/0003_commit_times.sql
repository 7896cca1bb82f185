-- When each append transaction committed, per context: the event store's own tables have no
-- time column. Appends to a context are serialised by a table lock and take clock_timestamp()
-- after it, so these times never go backwards within a context: a time maps to exactly one
-- position, and `uait replay --from-time` selects exactly the events committed since then.
CREATE TABLE IF NOT EXISTS event_commit_times (
    context        text NOT NULL,
    first_position bigint NOT NULL,
    last_position  bigint NOT NULL,
    committed_at   timestamptz NOT NULL,
    PRIMARY KEY (context, first_position)
);
CREATE INDEX IF NOT EXISTS event_commit_times_at_idx ON event_commit_times (context, committed_at);

-- Long-running commands (a completion, an agent run, a fine-tune): which are still to finish,
-- and which worker holds each one's lease. A row is written in the transaction that records
-- the run's acceptance and marked done in the one that records its outcome, so it is never out
-- of step with the event store. A worker that dies keeps its lease until lease_until; then any
-- worker may take the run over (attempts counts the takes; the last owner fences the outcome).
CREATE TABLE IF NOT EXISTS runs (
    command_id   uuid PRIMARY KEY,
    context      text NOT NULL,
    run_id       uuid NOT NULL,
    command_type text NOT NULL,
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
    owner        text,
    lease_until  timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    accepted_at  timestamptz NOT NULL DEFAULT now(),
    deadline_at  timestamptz,
    max_tokens   bigint,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS runs_open_idx ON runs (context, accepted_at) WHERE state <> 'done';

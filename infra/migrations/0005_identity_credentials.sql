-- Credentials and auth-flow state of the identity context. None of this is in the event store:
-- secrets never enter events or Kafka messages, and these rows change by compare-and-set at the
-- ingress (login, refresh rotation, TOTP steps, key use). Events record only the facts.

-- Each user's data key, wrapped by the key-encryption key (UAIT_KEY_ENCRYPTION_KEYS). Personal
-- data in events is sealed with it; erasing a user deletes this row, and with it the data.
CREATE TABLE IF NOT EXISTS user_data_keys (
    user_id     uuid PRIMARY KEY,
    wrapped_key bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS password_credentials (
    user_id       uuid PRIMARY KEY,
    password_hash text NOT NULL,
    changed_at    timestamptz NOT NULL DEFAULT now()
);

-- A session is one login: a family of refresh tokens that rotate on every use.
CREATE TABLE IF NOT EXISTS auth_sessions (
    session_id     uuid PRIMARY KEY,
    user_id        uuid NOT NULL,
    created_at     timestamptz NOT NULL,
    last_used_at   timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text,
    ip             text NOT NULL DEFAULT '',
    user_agent     text NOT NULL DEFAULT '',
    amr            text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS auth_sessions_user_idx ON auth_sessions (user_id, created_at DESC);

-- Only hashes: a token is high-entropy, so SHA-256 is enough and keeps lookups cheap.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash      bytea PRIMARY KEY,
    session_id      uuid NOT NULL REFERENCES auth_sessions (session_id) ON DELETE CASCADE,
    issued_at       timestamptz NOT NULL,
    idle_expires_at timestamptz NOT NULL,
    used_at         timestamptz
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session_idx ON refresh_tokens (session_id);

CREATE TABLE IF NOT EXISTS api_key_secrets (
    key_id       text PRIMARY KEY,
    user_id      uuid NOT NULL,
    secret_hash  bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

-- TOTP secrets are sealed by the key-encryption key; last_step blocks the replay of a code.
CREATE TABLE IF NOT EXISTS totp_credentials (
    user_id       uuid PRIMARY KEY,
    secret_sealed bytea NOT NULL,
    confirmed_at  timestamptz,
    last_step     bigint
);

CREATE TABLE IF NOT EXISTS recovery_codes (
    user_id   uuid NOT NULL,
    code_hash bytea NOT NULL,
    PRIMARY KEY (user_id, code_hash)
);

-- Password reset and email verification tokens (hashed, single use).
CREATE TABLE IF NOT EXISTS one_time_tokens (
    token_hash bytea PRIMARY KEY,
    user_id    uuid NOT NULL,
    purpose    text NOT NULL CHECK (purpose IN ('reset_password', 'verify_email')),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);

ALTER TABLE command_log ADD COLUMN IF NOT EXISTS actor text;

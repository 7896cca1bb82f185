-- JWT signing keys shared by every ingress replica. A key is published (verifiable, in JWKS)
-- from created_at, signs from activates_at, stops signing at retired_at and still verifies
-- until retired_at plus the longest token lifetime. private_key is PKCS8 DER encrypted with the
-- keyring (UAIT KEK setting), with the kid as associated data: a row copied under another kid
-- does not decrypt.
CREATE TABLE IF NOT EXISTS signing_keys (
    kid          text PRIMARY KEY,
    alg          text NOT NULL CHECK (alg IN ('EdDSA', 'RS256')),
    public_jwk   jsonb NOT NULL,
    private_key  bytea NOT NULL,
    created_at   timestamptz NOT NULL,
    activates_at timestamptz NOT NULL,
    retired_at   timestamptz
);
CREATE INDEX IF NOT EXISTS signing_keys_retired_idx ON signing_keys (retired_at);

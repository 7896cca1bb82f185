"""The cryptographic core of identity and access.

Envelope encryption under key-encryption keys (``keyring``), per-record data keys for erasable
personal data (``fields``), password hashing and policy (``passwords``), signing keys kept
encrypted in PostgreSQL (``keyset``, ``keystore``, ``signing``), JWT issue and verification
(``tokens``, with the header and claim rules in ``jose``),
opaque refresh tokens and API keys (``refresh``, ``apikeys``) and TOTP with recovery codes
(``totp``). Nothing here imports the ingress, workers or projections: callers pass plain values.
"""

"""Record headers of the retry path and the dead-letter topics (part of the message contract).

A producer may set the job headers on a command to override its type's retry policy:
``uait-attempts`` (executions before the dead-letter topic), ``uait-backoff`` (``fixed`` or
``exponential``) and ``uait-timeout-s`` (seconds per external call).
"""

from __future__ import annotations

# Job policy overrides, set by producers.
ATTEMPTS_HEADER = "uait-attempts"
BACKOFF_HEADER = "uait-backoff"
TIMEOUT_HEADER = "uait-timeout-s"

# Set by workers on records of the retry topic (and kept on dead letters).
FAILURES_HEADER = "uait-failures"  # failed executions so far
DUE_HEADER = "uait-due-at"  # ISO 8601: not to be executed before
FIRST_FAILURE_HEADER = "uait-first-failure-at"
LAST_FAILURE_HEADER = "uait-last-failure-at"
ORIGINAL_TOPIC_HEADER = "uait-original-topic"
ORIGINAL_PARTITION_HEADER = "uait-original-partition"
ORIGINAL_OFFSET_HEADER = "uait-original-offset"

# Added on dead letters.
ERROR_TYPE_HEADER = "uait-error-type"
ERROR_MESSAGE_HEADER = "uait-error-message"
TRACEBACK_DIGEST_HEADER = "uait-traceback-digest"
DEAD_LETTER_ID_HEADER = "uait-dead-letter-id"

# Set on a record put back onto its topic by a redrive.
REDRIVE_OF_HEADER = "uait-redrive-of"

WORKER_HEADERS = frozenset(
    {
        FAILURES_HEADER,
        DUE_HEADER,
        FIRST_FAILURE_HEADER,
        LAST_FAILURE_HEADER,
        ORIGINAL_TOPIC_HEADER,
        ORIGINAL_PARTITION_HEADER,
        ORIGINAL_OFFSET_HEADER,
        ERROR_TYPE_HEADER,
        ERROR_MESSAGE_HEADER,
        TRACEBACK_DIGEST_HEADER,
        DEAD_LETTER_ID_HEADER,
        REDRIVE_OF_HEADER,
    }
)
"""Headers a redrive strips: the redriven command starts over with fresh attempts."""

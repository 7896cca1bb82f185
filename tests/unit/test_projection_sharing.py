"""Runners of one store share decoded events only for the types more than one of them reads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from contexts import REGISTRY
from events.knowledge.events import DocumentDeleted, DocumentIngested
from events.outcomes import CommandSucceeded
from projections.base import Envelope
from projections.knowledge.cache_invalidation import CacheInvalidation
from projections.process import shared_decoding
from projections.runner import Decoded


def test_the_cache_follower_shares_the_documents_types_and_outcomes_share_nothing() -> None:
    followers = [CacheInvalidation(None, "c")]  # type: ignore[arg-type]
    shared = shared_decoding([*REGISTRY.projections(), *followers])
    assert shared["knowledge"].topics == {DocumentIngested.TYPE, DocumentDeleted.TYPE}
    assert CommandSucceeded.TYPE not in shared["knowledge"].topics
    for context, sharing in shared.items():
        readers = [p for p in (*REGISTRY.projections(), *followers) if p.context == context]
        for topic in sharing.topics:
            assert sum(topic in p.topics for p in readers) >= 2, (context, topic)


def test_without_the_follower_nothing_is_shared() -> None:
    assert "knowledge" not in shared_decoding(REGISTRY.projections())


def test_decoded_keeps_the_newest_and_forgets_the_oldest_past_its_size() -> None:
    decoded = Decoded(frozenset({"T"}), size=3)
    at = datetime.now(UTC)
    envelopes = [Envelope(i, uuid.uuid4(), 1, None, at, {}) for i in range(1, 6)]  # type: ignore[arg-type]
    for env in envelopes:
        decoded.put(env.position, env)
    assert [decoded.get(i) for i in range(1, 6)] == [None, None, *envelopes[2:]]

"""Derived ids are the standard library's uuid5, computed faster: stored streams depend on them."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from events.ids import COMMAND_NAMESPACE, DOCUMENT_NAMESPACE, EMAIL_NAMESPACE, uuid5


@given(
    st.text(max_size=300), st.sampled_from([COMMAND_NAMESPACE, DOCUMENT_NAMESPACE, EMAIL_NAMESPACE])
)
def test_uuid5_equals_the_standard_librarys_for_any_name(name: str, namespace: uuid.UUID) -> None:
    ours = uuid5(namespace, name)
    theirs = uuid.uuid5(namespace, name)
    assert ours == theirs
    assert str(ours) == str(theirs)
    assert ours.version == 5
    assert ours.variant == uuid.RFC_4122
    assert hash(ours) == hash(theirs)
    assert {ours: 1}[theirs] == 1

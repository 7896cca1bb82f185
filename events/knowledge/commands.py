"""Commands of the knowledge context."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field, StringConstraints

from events.base import Command, register

DocumentId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _no_control_characters(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and other C0 controls are never meaningful in a document.
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed (tab, newline and CR are)")
    # A lone surrogate (JSON "\ud800") is not a character and cannot be encoded as UTF-8.
    if _SURROGATE.search(value):
        raise ValueError("unpaired surrogate code points are not allowed")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace characters")
    return value


Text = Annotated[str, AfterValidator(_no_control_characters), AfterValidator(_not_blank)]
Source = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_no_control_characters)]
Tag = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, strip_whitespace=True),
    AfterValidator(_no_control_characters),
]


class KnowledgeCommand(Command):
    CONTEXT: ClassVar[str] = "knowledge"
    document_id: DocumentId

    def partition_key(self) -> str:
        return self.document_id


@register
class IngestDocument(KnowledgeCommand):
    """Add a document, or record a new version of it when its content changed.

    ``text`` is bounded by the ingress and re-checked by the worker against the configured
    limit (UAIT_MAX_TEXT_BYTES), which always stays below the broker's message size.
    """

    TYPE: ClassVar[str] = "IngestDocument"
    PERMISSION: ClassVar[str] = "knowledge:write"
    VERSION: ClassVar[int] = 1

    title: Annotated[Text, StringConstraints(max_length=500)]
    text: Text
    source: Annotated[
        str, StringConstraints(max_length=2000), AfterValidator(_no_control_characters)
    ] = ""
    tags: Annotated[list[Tag], Field(max_length=50)] = []


@register
class DeleteDocument(KnowledgeCommand):
    """Remove a document from the read models; its history stays in the event store."""

    TYPE: ClassVar[str] = "DeleteDocument"
    PERMISSION: ClassVar[str] = "knowledge:write"
    VERSION: ClassVar[int] = 1

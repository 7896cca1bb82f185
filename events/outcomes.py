"""The one outcome of every command, stored as the event of a per-command aggregate.

The aggregate id is derived from the command's message id (``events.ids.command_aggregate_id``)
and the outcome is its version 1, saved in the same transaction as the events the command
caused: a redelivered command conflicts on it, so it can never take effect twice.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from events.base import Event, register

RejectionCode = Literal[
    "malformed",  # not an envelope at all
    "unknown_type",  # unknown command type or version
    "invalid",  # the payload failed validation
    "too_large",  # over a configured limit
    "not_found",  # the aggregate it addresses does not exist
    "domain",  # a business rule refused it (e.g. deleting a missing document)
    "unauthorized",  # its actor could not be verified, or lacks the scope the command needs
    "cancelled",  # cancelled on request before or while it ran
    "deadline",  # a long-running command ran out of its wall-time or token budget
    "failed",  # a long-running command failed (e.g. its backend could not answer)
]


@register
class CommandSucceeded(Event):
    TYPE: ClassVar[str] = "CommandSucceeded"
    VERSION: ClassVar[int] = 1

    command_id: str
    command_type: str
    aggregate_id: str | None = None
    detail: str = ""
    events: list[str] = []


@register
class CommandRejected(Event):
    TYPE: ClassVar[str] = "CommandRejected"
    VERSION: ClassVar[int] = 1

    command_id: str
    command_type: str
    code: RejectionCode
    reason: str

"""Kafka topic names. Commands for a context go to one topic, keyed by aggregate id."""

from __future__ import annotations


def command_topic(context: str) -> str:
    return f"uait.commands.{context}"


def event_topic(context: str) -> str:
    return f"uait.events.{context}"


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def retry_topic(topic: str) -> str:
    """Where a command that failed transiently waits for its next attempt."""
    return f"{topic}.retry"


def context_of_topic(topic: str) -> str:
    """``uait.commands.knowledge`` -> ``knowledge``."""
    parts = topic.split(".")
    if len(parts) < 3 or parts[0] != "uait":
        raise ValueError(f"not a uait topic: {topic!r}")
    return parts[2]

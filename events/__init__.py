"""The language of the system: commands, events, the envelope, topics and serialisation.

Importing this package registers every message type, so ``events.base.load`` knows them all.
"""

from events import outcomes as outcomes
from events.identity import commands as identity_commands
from events.identity import events as identity_events
from events.knowledge import commands as knowledge_commands
from events.knowledge import events as knowledge_events

__all__ = [
    "identity_commands",
    "identity_events",
    "knowledge_commands",
    "knowledge_events",
    "outcomes",
]

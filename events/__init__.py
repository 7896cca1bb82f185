"""The language of the system: commands, events, the envelope, topics and serialisation.

Importing this package registers every message type, so ``events.base.load`` knows them all.
"""

from events import outcomes as outcomes
from events.knowledge import commands as knowledge_commands
from events.knowledge import events as knowledge_events

__all__ = ["knowledge_commands", "knowledge_events", "outcomes"]

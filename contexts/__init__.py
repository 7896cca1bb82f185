"""The bounded contexts of the system, registered in one place: adding a context is its own
subpackages (``events/<name>/``, ``workers/<name>/``, ``projections/<name>/``, ``app/<name>/``,
a ``contexts/<name>.py`` declaration) and one line here."""

from contexts import identity, inference, knowledge
from contexts.base import Context, Registry

REGISTRY = Registry(
    knowledge.CONTEXT,
    identity.CONTEXT,
    inference.CONTEXT,
)

__all__ = ["REGISTRY", "Context", "Registry"]

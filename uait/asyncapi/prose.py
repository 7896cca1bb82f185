"""The pieces the document is assembled from: its schemas (hoisted from pydantic's
``model_json_schema``), names, titles and wrapped prose."""

from __future__ import annotations

import copy
import inspect
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from contexts.base import Context
    from events.base import Event
from uait.asyncapi.platform import CODE_SPAN, KIB, MIB, NBSP, SCHEMAS, WIDTH


class Schemas:
    """``components.schemas``, in the order added; a name means one schema only."""

    def __init__(self, notes: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.schemas: dict[str, Any] = {}
        self._notes = notes

    def add(self, name: str, schema: dict[str, Any]) -> None:
        schema = copy.deepcopy(schema)
        for pointer, keys in self._notes.get(name, {}).items():
            node = _at(schema, name, pointer)
            node.update(copy.deepcopy(keys))
            if "description" in keys:
                # Indented by up to 10 in the YAML.
                node["description"] = wrap(keys["description"], WIDTH - 8)
        if name in self.schemas and self.schemas[name] != schema:
            raise ValueError(f"two different schemas are named {name!r}")
        self.schemas[name] = schema

    def add_model(self, model: type[BaseModel]) -> None:
        """The model's schema, after the models it nests (its ``$defs``, hoisted)."""
        schema = model.model_json_schema(ref_template=SCHEMAS + "{model}")
        for name, nested in sorted(schema.pop("$defs", {}).items()):
            self.add(name, nested)
        self.add(model.__name__, schema)

    def check_notes(self) -> None:
        stale = sorted(set(self._notes) - set(self.schemas))
        if stale:
            raise ValueError(f"notes for schemas that are not generated: {', '.join(stale)}")


def _at(schema: dict[str, Any], name: str, pointer: str) -> dict[str, Any]:
    node: Any = schema
    for part in pointer.split("/") if pointer else []:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError):
            node = None
        if node is None:
            raise ValueError(f"the note on {name}#/{pointer} names nothing in the schema")
    if not isinstance(node, dict):
        raise ValueError(f"the note on {name}#/{pointer} is not on a schema object")
    return node


def add_message(messages: dict[str, Any], name: str, message: dict[str, Any]) -> None:
    if name in messages:
        raise ValueError(f"two messages are named {name!r}")
    messages[name] = message


def public_events(context: Context) -> list[type[Event]]:
    return [e for e in context.events if e.PUBLIC]


def group_of(context: str) -> str:
    return f"uait.workers.{context}"


def camel(name: str) -> str:
    """``knowledge`` -> ``knowledge``; ``media_library`` -> ``mediaLibrary``."""
    first, *rest = name.replace("-", "_").split("_")
    return first + "".join(part.capitalize() for part in rest)


def title_of(name: str) -> str:
    words = name.replace("-", " ").replace("_", " ")
    return words[0].upper() + words[1:]


def summary_of(model: type[BaseModel], fallback: str) -> str:
    doc = model.__doc__  # its own docstring: a class without one must not show its base's
    first = inspect.cleandoc(doc).split("\n\n")[0] if doc else ""
    return " ".join(first.split()).replace("``", "`") or fallback


def sentence(text: str) -> str:
    """``the command's `document_id``` -> ``The command's `document_id`.``"""
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def phrase(text: str) -> str:
    """A summary as a phrase inside a sentence: ``Documents, ...search.`` -> ``documents, ...``."""
    text = text.strip().rstrip(".")
    if len(text) > 1 and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


def size_text(n: int) -> str:
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    if n % KIB == 0:
        return f"{n // KIB} KiB"
    return f"{n} bytes"


def wrap(text: str, width: int = WIDTH) -> str:
    """One paragraph, wrapped (a YAML block scalar then keeps the lines as they are), never
    inside a `code span`."""
    words = CODE_SPAN.sub(lambda m: m[0].replace(" ", NBSP), " ".join(text.split()))
    lines = textwrap.wrap(words, width, break_long_words=False, break_on_hyphens=False)
    lines = [line.replace(NBSP, " ") for line in lines]
    return "\n".join(lines) + "\n" if len(lines) > 1 else "".join(lines)


# ----------------------------------------------------------------------------------- rendering

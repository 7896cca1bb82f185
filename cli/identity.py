"""``uait users create-admin``: the first admin, published as a command like any registration."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.commanding import wait_outcome
from cli.console import console
from cli.security import keyed_settings

if TYPE_CHECKING:
    from infra.settings import Settings

users_app = typer.Typer(no_args_is_help=True, help="Users (the first admin comes from here).")


@users_app.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(help="the admin's email")],
    name: Annotated[str, typer.Option(help="display name")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin")
    ] = False,
    wait_s: Annotated[float, typer.Option(help="how long to wait for the outcome")] = 60.0,
) -> None:
    """Register a user with the admin role. The password is typed (or piped), never an option."""
    from infra.migrate import migrate
    from infra.startup import require_endpoints

    settings = keyed_settings()
    require_endpoints(settings)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    migrate(settings.database_url)
    try:
        user_id, command_id = asyncio.run(_register_admin(settings, email, name, password))
    except ValueError as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None
    outcome = wait_outcome(settings.database_url, "identity_command_outcomes", command_id, wait_s)
    if outcome is None:
        console.print(f"[yellow]no outcome within {wait_s:g} s[/yellow]; command {command_id}")
        raise typer.Exit(3)
    if outcome[0] != "succeeded":
        console.print(f"[red]rejected:[/red] {outcome[1]}")
        raise typer.Exit(1)
    typer.echo(user_id)


async def _register_admin(
    settings: Settings, email: str, name: str, password: str
) -> tuple[str, str]:
    from psycopg_pool import AsyncConnectionPool

    from events.identity.commands import RegisterUser
    from events.ids import uuid7
    from infra.actors import operator_signer
    from infra.identity import IdentityCore, normalise_email, valid_email
    from infra.publisher import CommandPublisher
    from security.passwords import PasswordPolicyError, check_password_policy

    email = normalise_email(email)
    if not valid_email(email):
        raise ValueError("the email address is not valid")
    try:
        password = check_password_policy(password, identity=[email.split("@")[0], name])
    except PasswordPolicyError as exc:
        raise ValueError(str(exc)) from None
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(settings.database_url, open=False)
    await pool.open()
    try:
        core = IdentityCore.from_settings(settings, pool)
        user_id = str(uuid7())
        key = await core.new_user_key(user_id)
        password_hash = await core.hash_password(password)
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO password_credentials (user_id, password_hash) VALUES (%s, %s)",
                (user_id, password_hash),
            )
        command = RegisterUser(
            user_id=user_id,
            email_hmac=core.email_hmac(email),
            email_sealed=core.seal_field(key, user_id, "email", email),
            name_sealed=core.seal_field(key, user_id, "name", name),
            roles=["admin", "user"],
        )
        async with CommandPublisher(
            settings.kafka_bootstrap,
            timeout_s=settings.publish_timeout_s,
            max_message_bytes=settings.kafka_max_message_bytes,
            signer=operator_signer(settings),
        ) as publisher:
            envelope = await publisher.publish(command, actor="cli:create-admin")
        return user_id, str(envelope.message_id)
    finally:
        await pool.close()

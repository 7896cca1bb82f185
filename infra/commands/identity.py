"""``uait users create-admin``, ``uait keys rotate|list`` and ``uait secrets generate``."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from infra.settings import Settings

users_app = typer.Typer(no_args_is_help=True, help="Users (the first admin comes from here).")
keys_app = typer.Typer(no_args_is_help=True, help="JWT signing keys.")
secrets_app = typer.Typer(no_args_is_help=True, help="Secret settings.")
console = Console(stderr=True)


def _settings() -> Settings:
    settings = Settings()
    if not settings.database_url:
        console.print("[red]UAIT_DATABASE_URL is not set[/red]")
        raise typer.Exit(2)
    if not settings.key_encryption_keys.get_secret_value():
        console.print("[red]UAIT_KEY_ENCRYPTION_KEYS is not set[/red] (`uait secrets generate`)")
        raise typer.Exit(2)
    return settings


@secrets_app.command("generate")
def secrets_generate() -> None:
    """Print fresh values for UAIT_KEY_ENCRYPTION_KEYS and UAIT_IDENTITY_PEPPER."""
    from infra.secrets import generate

    for name, value in generate().items():
        typer.echo(f"{name}={value}")


@keys_app.command("rotate")
def keys_rotate(
    activate_after: Annotated[
        float | None, typer.Option(help="seconds before it signs (default: the setting)")
    ] = None,
) -> None:
    """Add a signing key: published in JWKS at once, signing once every replica has it."""
    from infra.migrate import migrate
    from security.keyring import Keyring
    from security.keystore import rotate

    settings = _settings()
    migrate(settings.database_url)
    keyring = Keyring.from_setting(settings.key_encryption_keys.get_secret_value())
    wait = settings.signing_key_activation_s if activate_after is None else activate_after
    with psycopg.connect(settings.database_url) as conn:
        kid = rotate(conn, keyring, alg=settings.jwt_algorithm, activate_after_s=wait)
    typer.echo(kid)
    console.print(f"key {kid} is published now and signs in {wait:g} s")


@keys_app.command("list")
def keys_list() -> None:
    """Every signing key with its activation and retirement times."""
    settings = _settings()
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT kid, alg, created_at, activates_at, retired_at FROM signing_keys"
            " ORDER BY created_at"
        ).fetchall()
    table = Table("kid", "alg", "created", "signs from", "retired at")
    for row in rows:
        table.add_row(*(str(v) if v is not None else "" for v in row))
    Console().print(table)


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
    from infra.runtime import require_endpoints

    settings = _settings()
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
    outcome = _wait_outcome(settings.database_url, command_id, wait_s)
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

    from app.auth.service import IdentityCore, normalise_email, valid_email
    from app.publisher import CommandPublisher
    from events.identity.commands import RegisterUser
    from events.ids import uuid7
    from infra.actors import operator_signer
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


def _wait_outcome(database_url: str, command_id: str, wait_s: float) -> tuple[str, str] | None:
    deadline = time.monotonic() + wait_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            try:
                row = conn.execute(
                    "SELECT status, COALESCE(reason, '') FROM identity_command_outcomes"
                    " WHERE command_id = %s",
                    (command_id,),
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                row = None
            if row is not None:
                return str(row[0]), str(row[1])
            time.sleep(0.2)
    return None


# Tables holding blobs wrapped by the key-encryption key, and how each blob's aad is made.
WRAPPED: tuple[tuple[str, str, str, str], ...] = (
    ("user_data_keys", "user_id", "wrapped_key", "{}"),
    ("totp_credentials", "user_id", "secret_sealed", "totp:{}"),
)


@secrets_app.command("rewrap")
def secrets_rewrap() -> None:
    """After putting a new key first in UAIT_KEY_ENCRYPTION_KEYS: re-encrypt everything wrapped
    by an older one (signing keys, users' data keys, TOTP secrets); then the old key can go."""
    from rich.progress import Progress

    from infra.migrate import migrate
    from security.keyring import Keyring
    from security.keystore import rewrap_signing_keys

    settings = _settings()
    migrate(settings.database_url)
    keyring = Keyring.from_setting(settings.key_encryption_keys.get_secret_value())
    with psycopg.connect(settings.database_url) as conn:
        total = {"signing_keys": rewrap_signing_keys(conn, keyring)}
        with Progress(console=console) as progress:
            for table, id_column, column, aad in WRAPPED:
                rows = conn.execute(f"SELECT {id_column}, {column} FROM {table}").fetchall()
                task = progress.add_task(table, total=len(rows))
                changed = 0
                for ident, blob in rows:
                    if keyring.kid_of(bytes(blob)) != keyring.current_kid:
                        new = keyring.rewrap(bytes(blob), aad=aad.format(ident).encode())
                        with conn.transaction():
                            conn.execute(
                                f"UPDATE {table} SET {column} = %s"
                                f" WHERE {id_column} = %s AND {column} = %s",
                                (new, ident, blob),
                            )
                        changed += 1
                    progress.advance(task)
                total[table] = changed
    for table, changed in total.items():
        console.print(f"{table}: {changed} re-encrypted under {keyring.current_kid}")

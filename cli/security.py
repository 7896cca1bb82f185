"""``uait keys rotate|list`` (JWT signing keys) and ``uait secrets generate|rewrap``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from cli.console import console, load_settings

if TYPE_CHECKING:
    from infra.settings import Settings

keys_app = typer.Typer(no_args_is_help=True, help="JWT signing keys.")
secrets_app = typer.Typer(no_args_is_help=True, help="Secret settings.")


def keyed_settings() -> Settings:
    """The settings, refused (exit 2) without a database and a key-encryption key."""
    settings = load_settings()
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

    settings = keyed_settings()
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
    settings = keyed_settings()
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT kid, alg, created_at, activates_at, retired_at FROM signing_keys"
            " ORDER BY created_at"
        ).fetchall()
    table = Table("kid", "alg", "created", "signs from", "retired at")
    for row in rows:
        table.add_row(*(str(v) if v is not None else "" for v in row))
    Console().print(table)


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

    settings = keyed_settings()
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

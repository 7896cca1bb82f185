"""Secrets of the identity context: generating them, and keeping dev's own in the data dir.

Production passes them as settings (a secret store, the orchestrator's secrets); nothing here
ever makes up a value silently outside `uait dev`.
"""

from __future__ import annotations

import base64
import os
import secrets
from typing import TYPE_CHECKING

from security.keyring import Keyring

if TYPE_CHECKING:
    from pathlib import Path

NAMES = ("UAIT_KEY_ENCRYPTION_KEYS", "UAIT_IDENTITY_PEPPER")


def generate() -> dict[str, str]:
    return {
        "UAIT_KEY_ENCRYPTION_KEYS": Keyring.generate_setting(),
        "UAIT_IDENTITY_PEPPER": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """The dev stack's secrets: from the environment, else from ``<data_dir>/secrets.env``
    (created once, mode 0600), so a restarted `uait dev` still reads its own data."""
    if all(os.environ.get(n) for n in NAMES):
        return {n: os.environ[n] for n in NAMES}
    path = data_dir / "secrets.env"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in generate().items())
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {n: os.environ.get(n) or values[n] for n in NAMES}


def write_dev_env(data_dir: Path, env: dict[str, str]) -> Path:
    """``<data_dir>/dev.env`` (mode 0600): the running dev stack's settings, for the CLI
    (`env $(cat .uait/dev.env) uait users create-admin ...`)."""
    path = data_dir / "dev.env"
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in sorted(env.items()) if "\n" not in v)
    return path

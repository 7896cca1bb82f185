"""Sending one-time tokens (password reset, email verification): an outbox folder or SMTP."""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import time
import uuid
from email.message import EmailMessage
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

import orjson

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("uait.notify")


class Notifier(Protocol):
    async def send(self, to: str, subject: str, body: str) -> None: ...


class OutboxNotifier:
    """Development: each message is a JSON file in ``<data dir>/outbox`` (mode 0600).

    The log says only that a message was written, never its content: one-time tokens are
    secrets, and logs must hold none.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def send(self, to: str, subject: str, body: str) -> None:
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
        data = orjson.dumps({"to": to, "subject": subject, "body": body})
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        log.info("message %r written to the outbox (%s)", subject, name)


class SmtpNotifier:
    def __init__(self, url: str, sender: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("UAIT_SMTP_URL must be smtp://[user:pass@]host[:port] or smtps://...")
        self.parts = parts
        self.sender = sender

    async def send(self, to: str, subject: str, body: str) -> None:
        await asyncio.to_thread(self._send, to, subject, body)

    def _send(self, to: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, to, subject
        message.set_content(body)
        p = self.parts
        cls = smtplib.SMTP_SSL if p.scheme == "smtps" else smtplib.SMTP
        with cls(p.hostname or "", p.port or (465 if p.scheme == "smtps" else 25), timeout=10) as s:
            if p.scheme == "smtp":
                try:
                    s.starttls()
                except smtplib.SMTPNotSupportedError:
                    if p.username:  # never send a password in clear text
                        raise
                    log.warning("SMTP server %s offers no STARTTLS", p.hostname)
            if p.username:
                s.login(unquote(p.username), unquote(p.password or ""))
            s.send_message(message)

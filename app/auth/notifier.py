"""Sending one-time tokens (password reset, email verification): a log notifier or SMTP."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import unquote, urlsplit

log = logging.getLogger("uait.notify")


class Notifier(Protocol):
    async def send(self, to: str, subject: str, body: str) -> None: ...


class LogNotifier:
    """Development: the message goes to the log (the token with it: never use in production)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    async def send(self, to: str, subject: str, body: str) -> None:
        self.sent.append((to, subject, body))
        log.warning(
            "notification (log notifier, development only) to %s: %s\n%s", to, subject, body
        )


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
                    log.warning("SMTP server %s offers no STARTTLS", p.hostname)
            if p.username:
                s.login(unquote(p.username), unquote(p.password or ""))
            s.send_message(message)

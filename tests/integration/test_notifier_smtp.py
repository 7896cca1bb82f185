"""The SMTP notifier against a real SMTP conversation on a local socket."""

from __future__ import annotations

import asyncio

import pytest

from app.auth.notifier import SmtpNotifier

pytestmark = pytest.mark.integration


class SmtpPeer:
    """A minimal SMTP server: enough of RFC 5321 for one message, no STARTTLS, no AUTH."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.commands: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP\r\n")
        while line := await reader.readline():
            command = line.decode().strip()
            self.commands.append(command.split(" ")[0].upper())
            verb = command[:4].upper()
            if verb == "EHLO":
                writer.write(b"250-test\r\n250 8BITMIME\r\n")
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                body = []
                while (data := await reader.readline()) != b".\r\n":
                    body.append(data.decode())
                self.messages.append("".join(body))
                writer.write(b"250 queued\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


async def test_a_message_goes_out_over_smtp_without_a_password_in_clear():
    peer = SmtpPeer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        notifier = SmtpNotifier(f"smtp://127.0.0.1:{port}", "uait@example.test")
        await notifier.send("someone@example.test", "Reset your password", "token ot_abc")
        assert len(peer.messages) == 1
        assert "Subject: Reset your password" in peer.messages[0]
        assert "token ot_abc" in peer.messages[0]
        # With a password configured and no STARTTLS offered, nothing is sent.
        secret = SmtpNotifier(f"smtp://user:pw@127.0.0.1:{port}", "uait@example.test")
        with pytest.raises(Exception, match="STARTTLS"):
            await secret.send("someone@example.test", "Reset", "token ot_def")
        assert len(peer.messages) == 1
        assert "AUTH" not in peer.commands


def test_a_malformed_smtp_url_is_refused():
    with pytest.raises(ValueError, match="UAIT_SMTP_URL"):
        SmtpNotifier("http://mail.example", "uait@example.test")

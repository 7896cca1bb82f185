"""Audit entries for auth flows that run synchronously at the ingress.

Each becomes a ``RecordAuditEvent`` command on Kafka, so the audit trail lives in the event store
with everything else. Publishing never fails the flow it records: a broker outage is logged (and
counted), the login or refresh still answers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.clientip import client_ip
from events.identity.commands import AuditOutcome, RecordAuditEvent
from events.ids import NO_USER, uuid7
from infra.publisher import BrokerUnavailableError, MessageTooLargeError
from telemetry.metrics import AUDIT_PUBLISH_FAILURES

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from infra.publisher import CommandPublisher
    from infra.settings import Settings

log = logging.getLogger("uait.auth")


class Auditor:
    def __init__(self, publisher: CommandPublisher, settings: Settings) -> None:
        self.publisher = publisher
        self.settings = settings

    async def record(
        self,
        action: str,
        *,
        subject: str | None,
        actor: str,
        request: HTTPConnection | None = None,
        outcome: AuditOutcome = "ok",
        session_id: str = "",
        key_id: str = "",
        detail: str = "",
    ) -> None:
        ip = ""
        if request is not None:
            ip = client_ip(request.scope, self.settings.trusted_proxy_networks) or ""
        command = RecordAuditEvent(
            user_id=subject or str(NO_USER),
            record_id=str(uuid7()),
            action=action,
            outcome=outcome,
            ip=ip[:64],
            session_id=session_id,
            key_id=key_id,
            detail=detail[:200],
        )
        try:
            await self.publisher.publish(command, actor=actor)
        except (BrokerUnavailableError, MessageTooLargeError) as exc:
            AUDIT_PUBLISH_FAILURES.inc()
            log.error("audit entry %s for %s not published: %s", action, subject, exc)

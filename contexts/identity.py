"""The identity context: users, roles, API keys, second factors and the audit log."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.identity.plugin import HTTP
from cli.identity import users_app
from contexts.base import Context, declared_in
from events.base import Command, Event
from events.identity import commands, events, roles
from projections.identity.api_keys import ApiKeysProjection
from projections.identity.audit_log import AuditLogProjection
from projections.identity.users import UsersProjection
from workers.identity.handlers import IdentityDecider

if TYPE_CHECKING:
    from events.access import AccessPolicy
    from infra.settings import Settings
    from projections.base import Projection


def _decider(settings: Settings) -> IdentityDecider:
    return IdentityDecider()


def _read_models(access: AccessPolicy) -> list[Projection]:
    return [UsersProjection(access.role_permissions), ApiKeysProjection(), AuditLogProjection()]


CONTEXT = Context(
    name=commands.IdentityCommand.CONTEXT,
    summary="Users, roles, API keys, second factors and the audit log.",
    commands=declared_in(commands, Command),
    events=declared_in(events, Event),
    record_key="the `user_id` the command is about (for `RecordAuditEvent`, its `record_id`)",
    decider=_decider,
    read_models=_read_models,
    http=HTTP,
    roles=roles.ROLES,
    grants=roles.GRANTS,
    # Fails closed: unthrottled sign-ups are what it exists to stop.
    rate_limits={"register": {"limit": 3, "period_s": 3600, "cost": 1, "fail_open": False}},
    cli=(("users", users_app),),
)

"""Every projection, registered in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from projections.api_keys import ApiKeysProjection
from projections.audit_log import AuditLogProjection
from projections.command_outcomes import (
    CommandOutcomesProjection,
    IdentityCommandOutcomesProjection,
)
from projections.documents import DocumentsProjection
from projections.users import UsersProjection

if TYPE_CHECKING:
    from projections.base import Projection


def all_projections() -> list[Projection]:
    return [
        DocumentsProjection(),
        CommandOutcomesProjection(),
        UsersProjection(),
        ApiKeysProjection(),
        AuditLogProjection(),
        IdentityCommandOutcomesProjection(),
    ]

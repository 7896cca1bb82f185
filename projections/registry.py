"""Every projection, registered in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from projections.command_outcomes import CommandOutcomesProjection
from projections.documents import DocumentsProjection

if TYPE_CHECKING:
    from projections.base import Projection


def all_projections() -> list[Projection]:
    return [DocumentsProjection(), CommandOutcomesProjection()]

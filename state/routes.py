"""The routes a request can take. The route fixes the tool scope for the whole run."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Route(StrEnum):
    """Intent classes the router assigns."""

    INVOICE_PROCESSING = "invoice_processing"
    VENDOR_CHANGE = "vendor_change"
    PAYMENT_STATUS = "payment_status"
    POLICY_QUESTION = "policy_question"
    OUT_OF_SCOPE = "out_of_scope"
    ESCALATE = "escalate"


RouteName = Literal[
    "invoice_processing",
    "vendor_change",
    "payment_status",
    "policy_question",
    "out_of_scope",
    "escalate",
]

# Routes that plan and use tools; the others go straight to respond.
TOOL_ROUTES = frozenset(
    {Route.INVOICE_PROCESSING, Route.VENDOR_CHANGE, Route.PAYMENT_STATUS, Route.POLICY_QUESTION}
)

# Migration 0015 refuses any other status in the run index.
RunStatus = Literal["running", "interrupted", "completed", "refused", "escalated", "failed"]

FINISHED_STATUSES: tuple[RunStatus, ...] = ("completed", "refused", "escalated", "failed")
"""Statuses a run ends in: nothing more happens to the thread (``running`` and
``interrupted`` runs have not ended). Migration 0012's trigger spells the same list out."""

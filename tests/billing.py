"""Scripted planner replies that report usage metadata, and a price table for them.

The budget tests need model calls that cost something: `runtime.models` charges the
tokens a reply's usage metadata reports, priced with `Context.model_prices`.
"""

from __future__ import annotations

from langchain_core.messages import AIMessage

from tests.fakes import plan_reply

PRICES = {"scripted-planner": (1.0, 2.0), "scripted-respond": (1.0, 2.0)}
"""USD per 1k tokens for the scripted models: a 600-in/100-out reply costs $0.80."""


def billed(message: AIMessage, input_tokens: int = 600, output_tokens: int = 100) -> AIMessage:
    """``message`` with usage metadata, as the OpenAI client reports it."""
    return message.model_copy(
        update={
            "usage_metadata": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            }
        }
    )


def read_and_match(invoice_id: str) -> AIMessage:
    """A billed, non-final plan: read the invoice, then three-way match it."""
    return billed(
        plan_reply(
            False,
            ("get_invoice", {"invoice_id": invoice_id}),
            ("compute_match", {"invoice_id": invoice_id}),
        )
    )


def stage(invoice_id: str) -> AIMessage:
    """A billed, final plan: stage the invoice."""
    return billed(plan_reply(True, ("stage_invoice", {"invoice_id": invoice_id})))

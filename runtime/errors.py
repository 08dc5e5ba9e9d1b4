"""One error hierarchy for the whole project.

Every message says what was received and what to do about it. The CLI maps
`BadInput` subclasses to exit code 2 and everything else to exit code 1.
"""

from __future__ import annotations


class PayablesError(Exception):
    """Base class for every error this project raises on purpose."""


class BadInput(PayablesError, ValueError):
    """The caller sent something we cannot act on (CLI exit code 2).

    A `ValueError` too: the LangGraph server tells a caller the message of only a few
    exception types (`langgraph_api.serde`) and "An internal error occurred" for the rest,
    which would hide what to do from the one person who can do it.
    """


class ConfigError(BadInput):
    """Settings or environment are inconsistent (missing variable, bad value)."""


class WorldFileError(BadInput):
    """A world file (``payables seed --world``) does not match its JSON Schema."""


class ResumeError(BadInput):
    """A resume payload is malformed, or targets an interrupt that is not pending."""


class NotFound(BadInput):
    """A thread, invoice or other id does not exist."""


class ModelBehaviorError(PayablesError):
    """A model returned something unusable after the allowed repairs."""


class PolicyViolation(PayablesError):
    """An action was blocked by a policy rule enforced in code."""


class DatabaseError(PayablesError):
    """The database could not be reached or migrated."""


def shown(text: str, limit: int = 80) -> str:
    r"""Caller-supplied text as an error message may quote it.

    Non-printable characters (controls, NUL, bidi overrides, lone surrogates) appear as
    escapes such as ``\x1b`` or ``\u202e``, so a message never carries a terminal escape
    or reorders itself on screen; text longer than ``limit`` is cut with an ellipsis.
    """
    cut = text if len(text) <= limit else text[:limit] + "…"
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in cut)

"""Records <-> rows: the columns the store reads, and the records made of them.

Rows are read as tuples straight into :mod:`~sanic_chat.core.records`, never
as model instances (a model instance per row cost as much as the query).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from ..core.records import Conversation, ErrorInfo, Message, Role, Status, Usage
from .models import ConversationRow, MessageRow

__all__ = [
    "CONVERSATION_COLUMNS",
    "MESSAGE_COLUMNS",
    "MESSAGE_COLUMN_NAMES",
    "db_time",
    "to_conversation",
    "to_message",
    "utc",
]

#: a Conversation's columns, in the order :func:`to_conversation` unpacks them
CONVERSATION_COLUMNS = (
    ConversationRow.id,
    ConversationRow.owner,
    ConversationRow.title,
    ConversationRow.model,
    ConversationRow.created_at,
    ConversationRow.updated_at,
)
#: a Message's columns, in the order :func:`to_message` unpacks them
MESSAGE_COLUMNS = (
    MessageRow.id,
    MessageRow.conversation,
    MessageRow.role,
    MessageRow.content,
    MessageRow.status,
    MessageRow.model,
    MessageRow.reply_to,
    MessageRow.client_id,
    MessageRow.input_tokens,
    MessageRow.output_tokens,
    MessageRow.finish_reason,
    MessageRow.error_code,
    MessageRow.error_message,
    MessageRow.created_at,
    MessageRow.completed_at,
)
#: the same, as column names (the hand-written post statement reads them)
MESSAGE_COLUMN_NAMES = tuple(c.column_name for c in MESSAGE_COLUMNS)
# Both drivers return the text and integer columns as str / int / None, which is
# what those fields' python_value makes of them; only the timestamps (all
# UtcDateTimeField) need converting.
utc = MessageRow.created_at.python_value
#: a timestamp as the database stores it (naive UTC)
db_time = MessageRow.created_at.db_value


def to_conversation(row: Sequence[Any]) -> Conversation:
    id_, owner, title, model, created_at, updated_at = row
    return Conversation(id_, owner, title, model, utc(created_at), utc(updated_at))


def to_message(row: Sequence[Any]) -> Message:
    (
        id_,
        conversation_id,
        role,
        content,
        status,
        model,
        reply_to,
        client_id,
        input_tokens,
        output_tokens,
        finish_reason,
        error_code,
        error_message,
        created_at,
        completed_at,
    ) = row
    usage = None
    if input_tokens is not None or output_tokens is not None:
        usage = Usage(input_tokens, output_tokens)
    error = None
    if error_code is not None:
        error = ErrorInfo(error_code, error_message or "")
    return Message(
        id=id_,
        conversation_id=conversation_id,
        role=cast(Role, role),  # only the store writes these columns
        content=content,
        status=cast(Status, status),
        model=model,
        created_at=utc(created_at),
        completed_at=None if completed_at is None else utc(completed_at),
        reply_to=reply_to,
        client_id=client_id,
        usage=usage,
        finish_reason=finish_reason,
        error=error,
    )

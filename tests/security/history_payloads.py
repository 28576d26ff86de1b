"""Reading a workflow history's payloads: every one, raw or decrypted.

``fetch_history().to_json()`` shows payload data base64-encoded, so a plaintext search in it proves
nothing; these helpers look at the payload bytes themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import Message
from temporalio.api.common.v1 import Header, Payload, SearchAttributes
from temporalio.client import Client, WorkflowHistory

from infra.payload_codec import EncryptionCodec


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every payload in ``message`` (an event, a history) that the payload codec handles: not
    search attributes (the server must index them) nor headers (trace context)."""
    if isinstance(message, Payload):
        yield message
        return
    if isinstance(message, (SearchAttributes, Header)):
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is None:
                continue
            children = list(value.values())
        elif field.is_repeated:
            children = list(value)
        else:
            children = [value]
        for child in children:
            yield from payloads_in(child)


LOCAL_ACTIVITY_MARKER = "core_local_activity"
# ``workflow.patched`` records this marker; core writes its details (the patch id and whether it
# is deprecated) itself, never through the codec, and they hold no user data.
PATCH_MARKER = "core_patch"


def history_payloads(history: WorkflowHistory) -> list[Payload]:
    """Every payload keel's data converter wrote. Left out: a local activity marker's ``data``
    detail, which the SDK core writes itself, never through the codec, and which holds only
    bookkeeping (sequence number, activity type, attempt, times); its ``result`` is included. And
    a patch marker's details: the patch id, written by core likewise."""
    found: list[Payload] = []
    for event in history.events:
        marker = event.marker_recorded_event_attributes
        is_marker = event.HasField("marker_recorded_event_attributes")
        if is_marker and marker.marker_name == PATCH_MARKER:
            continue
        if is_marker and marker.marker_name == LOCAL_ACTIVITY_MARKER:
            for name, details in marker.details.items():
                if name != "data":
                    found.extend(payloads_in(details))
            continue
        found.extend(payloads_in(event))
    return found


def raw_bytes(history: WorkflowHistory) -> bytes:
    """The history as the server stores and sends it (payload data unencoded, unlike JSON)."""
    return b"".join(event.SerializeToString() for event in history.events)


async def readable_history(client: Client, workflow_id: str) -> str:
    """The history as someone holding the key reads it: every payload decrypted with ``client``'s
    codec, its data as text. For asserting that a secret is absent from what history holds."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    codec = client.data_converter.payload_codec
    texts = [history.to_json()]
    for payload in history_payloads(history):
        if isinstance(codec, EncryptionCodec):
            # decrypt() raises on a payload it cannot read (decode() of keel's converter defers
            # that to conversion): an unreadable payload must not pass as "holds no secret".
            payload.CopyFrom(codec.decrypt(payload))
        elif codec is not None:
            (decoded,) = await codec.decode([payload])
            payload.CopyFrom(decoded)
        texts.append(payload.data.decode("utf-8", errors="replace"))
    return "\n".join(texts)

"""
Relay frames: one binary WebSocket message is one protobuf
C{RelayMessageFrame} (C{proto/codex/exec_server/relay/v1/relay.proto}).

The frames codex exec-server 0.169.0 exchanges, all with C{version=1} and
C{ack}/C{ack_bits} left at 0:

  - C{resume} (harness, optional, first on a stream; ignored by the executor),
  - C{handshake} (harness: Noise message 1; executor: Noise message 2),
  - C{data} (one Noise transport record; C{seq} from 0, C{segment_count=1}),
  - C{reset} (executor, reason C{noise_relay_protocol_error}).

C{ack_frame} and C{heartbeat} are never sent and ignored when received, as
are the C{ack}/C{ack_bits} fields, C{resume.next_seq} and unknown fields
(newer codex adds trace context as fields 11 and 12).

L{parse_frame} applies the reference's validation; a frame that fails it
raises L{InvalidFrame}, which the executor drops (the stream survives) and a
harness treats as fatal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from execserver.relay.relay_pb2 import RelayMessageFrame

#: The only relay frame version.
FRAME_VERSION = 1

#: The one reset reason the reference sends (reset reasons are not
#: authenticated: receivers must not trust or log them).
PROTOCOL_ERROR_REASON = "noise_relay_protocol_error"

#: What Rust's str::trim() strips (Unicode White_Space): a stream id made
#: only of these is empty to the reference.
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class FrameKind(str, enum.Enum):
    """The body of a frame, named as its protobuf oneof member."""

    DATA = "data"
    ACK = "ack_frame"
    RESUME = "resume"
    RESET = "reset"
    HEARTBEAT = "heartbeat"
    HANDSHAKE = "handshake"


@dataclass(frozen=True, slots=True)
class Frame:
    """
    A valid frame, reduced to what a receiver acts on: C{seq} for data,
    C{payload} for data and handshake, C{reason} for reset.
    """

    kind: FrameKind
    stream_id: str
    seq: int = 0
    payload: bytes = b""
    reason: str = ""


class InvalidFrame(ValueError):
    """
    A WebSocket message that is not a valid relay frame: undecodable
    protobuf, or a frame the reference's validation rejects.
    """


def parse_frame(message: bytes) -> Frame:
    """
    Decode and validate one binary WebSocket message.

    @raise InvalidFrame: with a short fixed description (never the content).
    """
    try:
        frame = RelayMessageFrame.FromString(message)
    except (DecodeError, UnicodeDecodeError):  # the pure-Python protobuf raises the latter
        raise InvalidFrame("undecodable relay frame") from None
    if frame.version != FRAME_VERSION:
        raise InvalidFrame("unsupported relay frame version")
    if not frame.stream_id.strip(_WHITESPACE):
        raise InvalidFrame("relay frame without a stream id")
    kind = frame.WhichOneof("body")
    if kind is None:
        raise InvalidFrame("relay frame without a body")
    kind = FrameKind(kind)
    if kind is FrameKind.DATA:
        data = frame.data
        if data.segment_index != 0 or data.segment_count != 1:
            raise InvalidFrame("segmented relay data frame")
        if not data.payload:
            raise InvalidFrame("empty relay data frame")
        return Frame(kind, frame.stream_id, seq=data.seq, payload=data.payload)
    if kind is FrameKind.HANDSHAKE:
        if not frame.handshake.payload:
            raise InvalidFrame("empty relay handshake frame")
        return Frame(kind, frame.stream_id, payload=frame.handshake.payload)
    if kind is FrameKind.RESET:
        if not frame.reset.reason:
            raise InvalidFrame("relay reset frame without a reason")
        return Frame(kind, frame.stream_id, reason=frame.reset.reason)
    return Frame(kind, frame.stream_id)


def _frame(stream_id: str) -> RelayMessageFrame:
    if not stream_id.strip(_WHITESPACE):
        raise ValueError("a relay frame needs a stream id")
    return RelayMessageFrame(version=FRAME_VERSION, stream_id=stream_id)


def encode_resume(stream_id: str) -> bytes:
    """The harness's optional first frame on a stream (C{next_seq} 0)."""
    frame = _frame(stream_id)
    frame.resume.SetInParent()
    return frame.SerializeToString()


def encode_handshake(stream_id: str, payload: bytes) -> bytes:
    """A Noise handshake message."""
    if not payload:
        raise ValueError("a handshake frame needs a payload")
    frame = _frame(stream_id)
    frame.handshake.payload = payload
    return frame.SerializeToString()


def encode_data(stream_id: str, seq: int, payload: bytes) -> bytes:
    """One Noise transport record, numbered as its nonce."""
    if not payload:
        raise ValueError("a data frame needs a payload")
    frame = _frame(stream_id)
    frame.data.seq = seq
    frame.data.segment_count = 1
    frame.data.payload = payload
    return frame.SerializeToString()


def encode_reset(stream_id: str, reason: str = PROTOCOL_ERROR_REASON) -> bytes:
    """Tell the peer the stream is gone."""
    if not reason:
        raise ValueError("a reset frame needs a reason")
    frame = _frame(stream_id)
    frame.reset.reason = reason
    return frame.SerializeToString()

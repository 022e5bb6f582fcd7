"""CityWatch wire protocol, version 1: the sans-I/O core.

Roles: ``DeviceConnection`` (street pole), ``ServerEndpoint`` and ``EncNotifier``
(trusted server), ``EncEndpoint`` (Emergency Notification Center). Each takes bytes
and the current time in ms and gives back events and bytes to send; no sockets,
clocks or random sources of their own (all injected).
"""

from ._bundle import DEFAULT_TOPIC_PREFIX, BrokerAddress, ProvisioningBundle
from ._clock import wall_clock_ms
from ._crypto import AesGcmCipher, Cipher, alg_for_key_length, message_hash
from ._device import ContactState, DeviceConnection, PendingReport
from ._enc import EncEndpoint
from ._envelope import (
    ALG_A128GCM,
    ALG_A256GCM,
    ALG_NAMES,
    EXTERNAL_AAD,
    Envelope,
    decode_envelope,
)
from ._errors import (
    AuthenticationFailed,
    InvalidBundle,
    InvalidPlaintext,
    LocalProtocolError,
    MalformedMessage,
    MessageTooLarge,
    ProtocolError,
    RemoteProtocolError,
    UnexpectedMessage,
    UnknownKey,
)
from ._events import (
    AlertConfirmed,
    AlertReceived,
    AlertTimedOut,
    BroadcastConfirmed,
    ClockCorrected,
    ContactOpened,
    ContactRefused,
    ContactTimedOut,
    Event,
    IncidentReported,
    LinkedReportReceived,
    MessageDropped,
    ReportDelivered,
    ReportRefused,
    WindowAnnounced,
)
from ._messages import (
    DEFAULT_MAX_PHOTO,
    MESSAGE_CLASSES,
    B1Announce,
    B2Confirm,
    C1Hello,
    C2Ready,
    C3Report,
    C4Receipt,
    Coords,
    ErrorCode,
    ErrorMessage,
    Message,
    MessageType,
    N1Alert,
    N2Receipt,
    N3LinkedReport,
    decode_plaintext,
    epoch_hash,
)
from ._receive import Opened, open_message, seal
from ._replay import ReplayCache
from ._server import (
    DeviceDirectory,
    DeviceRecord,
    EncNotifier,
    Outgoing,
    RateLimit,
    ServerEndpoint,
    incident_id_for,
)
from ._ticket import TicketError, TicketSealer
from ._timing import Limits, Timing, backoff_delay

__all__ = [
    "ALG_A128GCM", "ALG_A256GCM", "ALG_NAMES", "DEFAULT_MAX_PHOTO", "DEFAULT_TOPIC_PREFIX",
    "EXTERNAL_AAD", "MESSAGE_CLASSES", "AesGcmCipher", "AlertConfirmed", "AlertReceived",
    "AlertTimedOut", "AuthenticationFailed", "B1Announce", "B2Confirm", "BroadcastConfirmed",
    "BrokerAddress", "C1Hello", "C2Ready", "C3Report", "C4Receipt", "Cipher", "ClockCorrected",
    "ContactOpened", "ContactRefused", "ContactState", "ContactTimedOut", "Coords",
    "DeviceConnection", "DeviceDirectory", "DeviceRecord", "EncEndpoint", "EncNotifier",
    "Envelope", "ErrorCode", "ErrorMessage", "Event", "IncidentReported", "InvalidBundle",
    "InvalidPlaintext", "Limits", "LinkedReportReceived", "LocalProtocolError",
    "MalformedMessage", "Message", "MessageDropped", "MessageTooLarge", "MessageType", "N1Alert",
    "N2Receipt", "N3LinkedReport", "Opened",
    "Outgoing", "PendingReport", "ProtocolError", "ProvisioningBundle", "RateLimit",
    "RemoteProtocolError", "ReplayCache", "ReportDelivered", "ReportRefused", "ServerEndpoint",
    "TicketError", "TicketSealer", "Timing", "UnexpectedMessage", "UnknownKey", "WindowAnnounced",
    "alg_for_key_length", "backoff_delay", "decode_envelope", "decode_plaintext", "epoch_hash",
    "incident_id_for", "message_hash", "open_message", "seal", "wall_clock_ms"
]

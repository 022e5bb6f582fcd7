"""The CityWatch trusted server: device registry, monitoring windows and broadcast,
contact handling over MQTT, photo verification, ENC notifier with a durable outbox,
admin API and metrics. ``citywatch server ...`` is its command line (``server.cli``).

Exceptions (``_errors``):

    ServerError
    ├── ConfigError           the configuration file is missing, unreadable or invalid
    ├── MasterKeyError        the master key file is absent, malformed or too readable
    ├── VerifierModelError    a model file of the photo check is missing or not the pinned one
    ├── RegistryError         a registry or window operation cannot be done as asked
    │   ├── DeviceNotFound    no device with that UID
    │   └── DeviceExists      a device with that UID is already registered
    ├── EncDeliveryError      the ENC did not accept an alert (retried by the outbox)
    └── UsageError            a command-line option is unusable, or the server refused it
"""

from ._app import TrustedServer
from ._bundle import provisioning_bundle, write_bundle
from ._config import (
    AdminConfig,
    BrokerConfig,
    DatabaseConfig,
    EncConfig,
    MasterKeyConfig,
    ScheduleConfig,
    ServerConfig,
    TimingConfig,
    VerificationConfig,
    example_config,
    load_config,
    parse_config,
)
from ._directory import RegistryDirectory
from ._errors import (
    ConfigError,
    DeviceExists,
    DeviceNotFound,
    EncDeliveryError,
    MasterKeyError,
    RegistryError,
    ServerError,
    UsageError,
    VerifierModelError,
)
from ._keys import MasterKey
from ._metrics import ServerMetrics
from ._models import SERVER_MODEL_PINS, VerifierModels
from ._notifier import CONTENT_TYPE, EncOutbox
from ._outcome import Outcome
from ._setup import open_store
from ._store import (
    AuditRecord,
    DeviceInfo,
    IncidentInfo,
    OutboxItem,
    Store,
    WindowInfo,
    make_engine,
    migrate,
    now_ms,
)
from ._verify import (
    Decision,
    PhotoVerifier,
    PoseVerifier,
    Verdict,
    VerifierPool,
    VerifierSettings,
    decide,
)
from ._windows import MonitoringPlan, scheduled_until

__all__ = [
    "CONTENT_TYPE",
    "SERVER_MODEL_PINS",
    "AdminConfig",
    "AuditRecord",
    "BrokerConfig",
    "ConfigError",
    "DatabaseConfig",
    "Decision",
    "DeviceExists",
    "DeviceInfo",
    "DeviceNotFound",
    "EncConfig",
    "EncDeliveryError",
    "EncOutbox",
    "IncidentInfo",
    "MasterKey",
    "MasterKeyConfig",
    "MasterKeyError",
    "MonitoringPlan",
    "OutboxItem",
    "Outcome",
    "PhotoVerifier",
    "PoseVerifier",
    "RegistryDirectory",
    "RegistryError",
    "ScheduleConfig",
    "ServerConfig",
    "ServerError",
    "ServerMetrics",
    "Store",
    "TimingConfig",
    "TrustedServer",
    "UsageError",
    "Verdict",
    "VerificationConfig",
    "VerifierModelError",
    "VerifierModels",
    "VerifierPool",
    "VerifierSettings",
    "WindowInfo",
    "decide",
    "example_config",
    "load_config",
    "make_engine",
    "migrate",
    "now_ms",
    "open_store",
    "parse_config",
    "provisioning_bundle",
    "scheduled_until",
    "write_bundle",
]

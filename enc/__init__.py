"""The Emergency Notification Center: alert endpoint, alert store, operator dashboard,
CAP export.

``citywatch enc run --config enc.toml`` serves ``POST /v1/alerts`` (N1 in, N2 out,
protocol.md section 5) and the dashboard. The exception tree is in ``enc._errors``:

    EncError
    ├── ConfigError          the configuration is wrong (the message names the file and key)
    ├── StoreError           the alert store failed; the caller answers "retry later"
    ├── NotFound             no such alert or operator
    ├── ActionRefused        an operator action that the alert's state or the role forbids
    └── LoginRefused         wrong password, unknown, disabled or locked-out operator
"""

from ._cap import CAP_NAMESPACE, cap_identifier, cap_message, cap_time
from ._config import (
    CapSection,
    DashboardSection,
    DatabaseSection,
    EncConfig,
    HttpSection,
    LimitsSection,
    ServerKey,
    ServerTrust,
    config_from_mapping,
    example_config,
    load_config,
)
from ._errors import (
    ActionRefused,
    ConfigError,
    EncError,
    LoginRefused,
    NotFound,
    StoreError,
    UsageError,
)
from ._handling import (
    ALERT_TRANSITIONS,
    RESOLUTIONS,
    AlertAction,
    Role,
    apply_action,
    escalate_due,
)
from ._live import LiveFeed
from ._operators import MIN_PASSWORD_LENGTH, Operator, OperatorDirectory, Session
from ._receiver import COSE_CONTENT_TYPE, AlertReceiver
from ._service import EncService, build_app
from ._store import Alert, AlertStatus, AlertStore, AuditEntry, migrate

__all__ = [
    "ALERT_TRANSITIONS",
    "CAP_NAMESPACE",
    "COSE_CONTENT_TYPE",
    "MIN_PASSWORD_LENGTH",
    "RESOLUTIONS",
    "ActionRefused",
    "Alert",
    "AlertAction",
    "AlertReceiver",
    "AlertStatus",
    "AlertStore",
    "AuditEntry",
    "CapSection",
    "ConfigError",
    "DashboardSection",
    "DatabaseSection",
    "EncConfig",
    "EncError",
    "EncService",
    "HttpSection",
    "LimitsSection",
    "LiveFeed",
    "LoginRefused",
    "NotFound",
    "Operator",
    "OperatorDirectory",
    "Role",
    "ServerKey",
    "ServerTrust",
    "Session",
    "StoreError",
    "UsageError",
    "apply_action",
    "build_app",
    "cap_identifier",
    "cap_message",
    "cap_time",
    "config_from_mapping",
    "escalate_due",
    "example_config",
    "load_config",
    "migrate",
]

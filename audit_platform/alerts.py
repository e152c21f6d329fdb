"""Operator alerts: one :class:`Alert` → a structured log record, and a JSON POST to a webhook when one is set.

:class:`AlertResource` is a Dagster resource (key ``"alerts"`` in the code location). Every alert is logged on
the ``audit_platform.alerts`` logger with ``extra={"audit": {...}}`` (see :mod:`audit_db_core.logs`); when
``webhook_url`` is configured the alert is also POSTed as JSON with the standard library (no extra dependency),
retried with exponential backoff and jitter on connection errors, timeouts, HTTP 5xx and 429.
:meth:`AlertResource.send` never raises: it returns a :class:`DeliveryReport`.

The webhook URL is a secret (Slack and Teams URLs carry their token in the path or query): it never appears in
logs, errors, reports or payloads, only its scheme and host (``https://hooks.example.com/…``).

Payload (one JSON object)::

    {"text": "❌ job partition_maintenance_job failed in step create_partitions: ... — http://ui/runs/<id>",
     "title": "...", "severity": "error", "job_name": "...", "run_id": "...", "step": "...",
     "error": "...", "run_url": "...", "details": {...}}

* Slack incoming webhooks display ``text`` (the other keys are ignored).
* Microsoft Teams: the retired "Office 365 connector" webhooks expect a MessageCard; use a Teams *Workflow*
  ("Post to a channel when a webhook request is received") whose action posts ``triggerBody()?['text']``
  (and may read the other fields).
* Anything else (Mattermost, a generic HTTP collector, an incident tool) can read the structured fields.

Example::

    alerts = AlertResource(webhook_url=dg.EnvVar("AUDIT_ALERT_WEBHOOK_URL"), ui_base_url="http://127.0.0.1:3000")
    report = alerts.send(Alert(title="disk full", severity="warning", job_name=None, run_id=None,
                               step=None, error="no space left on device"))
    report.delivered
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import dagster as dg
from audit_db_core.errors import redact, redact_value

logger = logging.getLogger("audit_platform.alerts")

AlertSeverity = Literal["error", "warning"]

#: How much of an error message an alert carries.
MAX_ERROR_CHARS = 2000
#: How much of the error the one-line ``text`` carries.
MAX_TEXT_ERROR_CHARS = 300
#: The longest server-requested wait (``Retry-After``) honoured between attempts, in seconds.
MAX_RETRY_AFTER_SECONDS = 10.0

_ICONS: dict[str, str] = {"error": "❌", "warning": "⚠️"}
_USER_AGENT = "audit-platform-alerts/1"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _one_line(text: str) -> str:
    """The first non-blank line of ``text`` (messages with a stack or a hint keep their headline)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


@dataclass(frozen=True)
class Alert:
    """One thing an operator must look at.

    ``error`` is redacted (passwords masked; a database error's DETAIL / CONTEXT lines, which quote row values,
    removed) and cut to :data:`MAX_ERROR_CHARS`; ``details`` values are redacted too. ``job_name``
    and ``run_id`` are ``None`` for alerts that are not about a run (e.g. rows in the DEFAULT partition).
    """

    title: str
    severity: AlertSeverity
    job_name: str | None
    run_id: str | None
    step: str | None = None
    error: str = ""
    run_url: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in _ICONS:
            raise ValueError(f"alert severity must be 'error' or 'warning', not {self.severity!r}")
        object.__setattr__(self, "title", _truncate(redact(self.title), 300))
        object.__setattr__(self, "error", _truncate(redact(self.error or "").strip(), MAX_ERROR_CHARS))
        object.__setattr__(self, "details", redact_value(dict(self.details)))

    @property
    def text(self) -> str:
        """One human line: icon, title, the error's headline and the run link."""
        line = f"{_ICONS[self.severity]} {self.title}"
        headline = _truncate(_one_line(self.error), MAX_TEXT_ERROR_CHARS)
        if headline:
            line += f": {headline}"
        if self.run_url:
            line += f" — {self.run_url}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """The alert's fields (no ``text``), for structured logs."""
        return {
            "title": self.title,
            "severity": self.severity,
            "job_name": self.job_name,
            "run_id": self.run_id,
            "step": self.step,
            "error": self.error,
            "run_url": self.run_url,
            "details": self.details,
        }

    def payload(self) -> dict[str, Any]:
        """The JSON object POSTed to the webhook: ``text`` first, then every field."""
        return {"text": self.text, **self.to_dict()}


@dataclass(frozen=True)
class DeliveryReport:
    """What :meth:`AlertResource.send` did. ``error`` is redacted and never contains the webhook URL;
    ``target`` is the webhook's scheme and host only (``None`` when no webhook is configured)."""

    delivered: bool
    attempts: int
    webhook_configured: bool
    target: str | None = None
    status: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "attempts": self.attempts,
            "webhook_configured": self.webhook_configured,
            "target": self.target,
            "status": self.status,
            "error": self.error,
        }


def mask_url(url: str) -> str:
    """``scheme://host[:port]/…`` — what may be shown of a secret URL (never its path, query or userinfo).

    >>> mask_url("https://hooks.slack.com/services/T000/B000/XXXX")
    'https://hooks.slack.com/…'
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if not parts.scheme or not host:
        return "<invalid URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return f"{parts.scheme}://{netloc}/…"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: a POST must not be replayed (or turned into a GET) somewhere else."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


class _Attempt:
    """The outcome of one POST."""

    __slots__ = ("delivered", "error", "retry_after", "retryable", "status")

    def __init__(
        self,
        *,
        delivered: bool,
        status: int | None = None,
        error: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.delivered = delivered
        self.status = status
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return None if seconds is None or seconds < 0 else min(seconds, MAX_RETRY_AFTER_SECONDS)


class AlertResource(dg.ConfigurableResource):
    """Sends :class:`Alert` s: always to the log, and to a Slack/Teams/generic JSON webhook when configured.

    Attributes:
        webhook_url: the incoming-webhook URL (a secret: pass ``dg.EnvVar(...)``); ``None`` or ``""`` = log only.
        ui_base_url: the Dagster UI address (``http://127.0.0.1:3000``) used for run links; ``None`` = no links.
        timeout_seconds: the timeout of one POST.
        max_attempts: POSTs per alert at most (connection errors, timeouts, 5xx and 429 are retried).
        backoff_seconds: the first wait between attempts; it doubles each time, with jitter.
    """

    webhook_url: str | None = None
    ui_base_url: str | None = None
    timeout_seconds: float = 5.0
    max_attempts: int = 3
    backoff_seconds: float = 0.5

    # -- helpers -------------------------------------------------------------------------------------------------

    def _webhook(self) -> str | None:
        url = (self.webhook_url or "").strip()
        return url or None

    def run_url(self, run_id: str | None) -> str | None:
        """``{ui_base_url}/runs/{run_id}``, or ``None`` without a base URL or a run."""
        base = (self.ui_base_url or "").strip().rstrip("/")
        if not base or not run_id:
            return None
        return f"{base}/runs/{run_id}"

    def webhook_target(self) -> str | None:
        """The configured webhook's scheme and host (``https://hooks.example.com/…``), safe to show."""
        url = self._webhook()
        return mask_url(url) if url else None

    def _scrub(self, text: str) -> str:
        """Redact ``text`` and remove the webhook URL (and its path) from it, should an error echo them."""
        text = redact(text)
        url = self._webhook()
        if url:
            target = mask_url(url)
            text = text.replace(url, target)
            try:
                parts = urlsplit(url)
            except ValueError:
                return text
            for secret in (parts.path, parts.query, parts.username, parts.password):
                if secret and len(secret) > 1:
                    text = text.replace(secret, "…")
        return text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """The wait after failed attempt ``attempt`` (1-based): ``backoff * 2**(attempt-1)`` ± 50 % jitter,
        or the server's ``Retry-After`` (capped) when it asked for longer."""
        base = max(self.backoff_seconds, 0.0) * (2 ** (attempt - 1))
        delay = base * random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    # -- delivery ------------------------------------------------------------------------------------------------

    def _post_once(self, url: str, body: bytes) -> _Attempt:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": _USER_AGENT},
        )
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=self.timeout_seconds) as response:
                status = int(getattr(response, "status", 200))
                response.read(65536)
            if 200 <= status < 300:
                return _Attempt(delivered=True, status=status)
            return _Attempt(delivered=False, status=status, error=f"HTTP {status}")
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
            try:
                exc.read(65536)
            except Exception:  # noqa: BLE001 - the body is informative only
                pass
            finally:
                exc.close()
            retryable = status >= 500 or status == 429
            return _Attempt(
                delivered=False,
                status=status,
                error=f"HTTP {status} {exc.reason}".strip(),
                retryable=retryable,
                retry_after=_retry_after(exc.headers) if retryable else None,
            )
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                return _Attempt(delivered=False, error=f"timed out after {self.timeout_seconds:g}s", retryable=True)
            return _Attempt(delivered=False, error=f"connection failed: {reason}", retryable=True)
        except (TimeoutError, socket.timeout):
            return _Attempt(delivered=False, error=f"timed out after {self.timeout_seconds:g}s", retryable=True)
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            return _Attempt(delivered=False, error=f"connection failed: {type(exc).__name__}: {exc}", retryable=True)
        except ValueError as exc:  # malformed URL; its message would echo the URL: name the type only
            return _Attempt(delivered=False, error=f"invalid webhook URL ({type(exc).__name__})")

    def _deliver(self, url: str, alert: Alert) -> DeliveryReport:
        target = mask_url(url)
        scheme = urlsplit(url).scheme.lower() if target != "<invalid URL>" else ""
        if scheme not in ("http", "https"):
            return DeliveryReport(False, 0, True, target, error="webhook URL must be an http(s) URL")
        body = json.dumps(alert.payload(), ensure_ascii=False, default=str).encode("utf-8")
        attempts = max(1, int(self.max_attempts))
        outcome = _Attempt(delivered=False, error="not attempted")
        made = 0
        for made in range(1, attempts + 1):
            outcome = self._post_once(url, body)
            if outcome.delivered or not outcome.retryable or made == attempts:
                break
            delay = self._backoff(made, outcome.retry_after)
            logger.info(
                "alert webhook attempt failed; retrying",
                extra={"audit": {"target": target, "attempt": made, "status": outcome.status,
                                 "error": self._scrub(outcome.error or ""), "retry_in_s": round(delay, 3)}},
            )
            time.sleep(delay)
        return DeliveryReport(
            delivered=outcome.delivered,
            attempts=made,
            webhook_configured=True,
            target=target,
            status=outcome.status,
            error=None if outcome.delivered else self._scrub(outcome.error or "delivery failed"),
        )

    def send(self, alert: Alert) -> DeliveryReport:
        """Log ``alert``, then POST it to the webhook (if configured). Never raises."""
        try:
            level = logging.ERROR if alert.severity == "error" else logging.WARNING
            logger.log(level, "alert: %s", alert.text, extra={"audit": {"alert": alert.to_dict()}})
        except Exception as exc:  # noqa: BLE001 - a broken handler must not stop delivery
            logging.getLogger(__name__).debug("alert log failed: %s", type(exc).__name__)
        url = self._webhook()
        if url is None:
            return DeliveryReport(delivered=False, attempts=0, webhook_configured=False)
        try:
            report = self._deliver(url, alert)
        except Exception as exc:  # noqa: BLE001 - send() never raises into the sensor loop
            report = DeliveryReport(
                delivered=False,
                attempts=0,
                webhook_configured=True,
                target=mask_url(url),
                error=self._scrub(f"unexpected {type(exc).__name__}: {exc}"),
            )
        try:
            audit = {"alert_title": alert.title, "run_id": alert.run_id, **report.to_dict()}
            if report.delivered:
                logger.info("alert delivered to %s", report.target, extra={"audit": audit})
            else:
                logger.warning("alert NOT delivered to %s: %s", report.target, report.error, extra={"audit": audit})
        except Exception:  # noqa: BLE001
            pass
        return report

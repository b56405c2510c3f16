"""Alerting: tell someone when a run failed or ended partial, or ended OK with a warning (the run report's
`warnings`, e.g. `events_silent`: the Capillary webhook has gone quiet; `LOYALTY_RUN_STATUS` stays `ok`).

Two targets, either or both, from `[loyalty]` settings:
- `alert_command`: a shell command run with the human summary on stdin and the JSON report in the environment
  variable `LOYALTY_ALERT_JSON` (plus `LOYALTY_RUN_ID`, `LOYALTY_RUN_STATUS`, `LOYALTY_EXIT_CODE`);
  e.g. `mail -s "loyalty-etl failed" ops@example.com`.
- `alert_webhook`: a URL POSTed `{"text": <summary>, "run": <report as JSON>}`; the `text` key is what Slack/Teams/
  Mattermost incoming webhooks display.

`notify` never raises: a broken alert target must not turn a partial run into a crash, nor hide the run's own exit
code. Everything sent is redacted, the command does not inherit credential environment variables, and both targets
have timeouts so a hung receiver cannot hold the nightly job (and its warehouse lock) forever.

`python -m pipelines.alerts --exit-code N [--log FILE]` is what the cron wrapper calls when the process died without
reporting (killed, out of memory, lock held by a previous night): there is no RunReport then, so one is built from
the exit code and the tail of the log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pipelines.logs import get_logger, redact, register_secret
from pipelines.report import EXIT_OK, RunReport, render_summary

log = get_logger("alerts")

REPORTED_ENV = "LOYALTY_ALERT_REPORTED_FILE"
COMMAND_TIMEOUT_S = 60.0
WEBHOOK_TIMEOUT_S = 10.0
# environment variables the alert command must not inherit: it is often a third-party script
_SECRET_ENV = re.compile(r"CREDENTIALS|PASSWORD|SECRET|TOKEN|API_?KEY", re.IGNORECASE)


class AlertSettings(Protocol):
    alert_command: str
    alert_webhook: str


def payload(report: RunReport) -> dict[str, Any]:
    return {"text": render_summary(report), "run": report.to_dict()}


def notify(settings: AlertSettings, report: RunReport) -> None:
    """Send the report to the configured targets when the run did not end OK or warned. Never raises."""
    try:
        if report.exit_code == EXIT_OK and not report.warnings:
            return
        _mark_reported(report)
        command = (getattr(settings, "alert_command", "") or "").strip()
        webhook = (getattr(settings, "alert_webhook", "") or "").strip()
        if not command and not webhook:
            log.info("run %s ended %s; no alert_command or alert_webhook configured", report.run_id, report.status)
            return
        body = payload(report)
        if command:
            _run_command(command, body, report)
        if webhook:
            _post_webhook(webhook, body)
    except Exception as exc:  # noqa: BLE001 - the contract: alerting never breaks the run
        log.error("alerting failed: %s", redact(f"{type(exc).__name__}: {exc}"))


def _mark_reported(report: RunReport) -> None:
    """Tell a wrapper (deploy/cron, deploy/systemd) that this run reported itself, so the wrapper alerts only for
    deaths that never reached `notify` (SIGKILL, OOM, a config error before the run started)."""
    marker = os.environ.get(REPORTED_ENV)
    if marker:
        try:
            Path(marker).write_text(f"{report.run_id} {report.status} {report.exit_code}\n")
        except OSError as exc:
            log.warning("cannot write %s=%s: %s", REPORTED_ENV, marker, exc)


def _run_command(command: str, body: dict[str, Any], report: RunReport) -> None:
    env = {k: v for k, v in os.environ.items() if not _SECRET_ENV.search(k)}
    env.update(
        LOYALTY_ALERT_JSON=redact(json.dumps(body["run"], default=str)),
        LOYALTY_RUN_ID=report.run_id,
        LOYALTY_RUN_STATUS=report.status,
        LOYALTY_EXIT_CODE=str(report.exit_code),
    )
    try:
        done = subprocess.run(command, shell=True, input=body["text"] + "\n", text=True, env=env,
                              capture_output=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.error("alert_command did not finish within %.0fs; abandoned", COMMAND_TIMEOUT_S)
        return
    if done.returncode != 0:
        log.error("alert_command exited %d: %s", done.returncode, redact(done.stderr.strip())[-500:])
    else:
        log.info("alert sent to alert_command for run %s", report.run_id)


def _post_webhook(url: str, body: dict[str, Any]) -> None:
    import requests

    # webhook URLs usually carry their token in the path (Slack, Teams): never log the URL itself, nor its path and
    # query alone (requests' connection errors quote "url: /services/T000/B000/<token>" without the host)
    register_secret(url)
    parts = urlsplit(url)
    register_secret(parts.path)
    register_secret(parts.query)
    data = redact(json.dumps(body, default=str)).encode()
    try:
        resp = requests.post(url, data=data, headers={"Content-Type": "application/json"},
                             timeout=WEBHOOK_TIMEOUT_S)
    except requests.RequestException as exc:
        log.error("alert_webhook POST failed: %s", redact(f"{type(exc).__name__}: {exc}"))
        return
    if resp.status_code >= 300:
        log.error("alert_webhook answered HTTP %d: %s", resp.status_code, redact(resp.text[:300]))
    else:
        log.info("alert sent to alert_webhook (HTTP %d)", resp.status_code)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 16384, 0))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _exit_code(text: str) -> int:
    """`137`, or `KILL` / `SIGKILL` (systemd's $EXIT_STATUS for a killed service) as 128 + signal number."""
    try:
        return int(text)
    except ValueError:
        name = text.upper() if text.upper().startswith("SIG") else "SIG" + text.upper()
        try:
            return 128 + signal.Signals[name].value
        except KeyError:
            raise argparse.ArgumentTypeError(f"not an exit code or signal name: {text}") from None


def _describe_exit(code: int) -> str:
    if code == 75:
        return "skipped: the previous run still holds the lock"
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"the process exited with code {code} without reporting"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.alerts",
                                     description="Send an alert for a run that ended without its own report.")
    parser.add_argument("--exit-code", type=_exit_code, required=True,
                        help="the exit code, or a signal name as systemd reports it (KILL, SEGV, ...)")
    parser.add_argument("--command", default="run", help="the loyalty-etl sub-command that ran")
    parser.add_argument("--log", type=Path, help="log file whose tail goes into the alert")
    args = parser.parse_args(argv)
    from pipelines.logs import setup_logging

    setup_logging("text", 1)
    try:
        # resolving the full settings also registers every credential for redaction of the log tail
        from pipelines.config import load_settings

        settings: Any = load_settings()
    except Exception:  # noqa: BLE001 - a broken config may be why the run died; the alert must still go out
        from pipelines.config import load_loyalty

        try:
            settings = load_loyalty(check_keys=False)
        except Exception:  # noqa: BLE001
            settings = argparse.Namespace(alert_command="", alert_webhook="")
    error = _describe_exit(args.exit_code)
    if args.log:
        tail = _log_tail(args.log)
        error += f" (log: {args.log})" + (f"\nlast log lines:\n{tail}" if tail else "")
    report = RunReport(command=args.command, error=error).finish()
    report.exit_code = args.exit_code
    notify(settings, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

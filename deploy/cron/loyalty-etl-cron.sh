#!/usr/bin/env bash
# Cron wrapper for the nightly load (see docs/operations.md, "cron").
#
#   15 2 * * *  /opt/loyalty-warehouse/deploy/cron/loyalty-etl-cron.sh            # `loyalty-etl run`
#   0 3 * * 6   /opt/loyalty-warehouse/deploy/cron/loyalty-etl-cron.sh backfill --since 2024-01-01 --until 2025-01-01
#
# What it adds around `loyalty-etl`:
# - a lock (flock): if last night's run is still going, this one does not start; that is logged and alerted (75);
# - one log file per run in $LOYALTY_LOG_DIR (default <project>/logs), `latest.log` pointing at the newest,
#   files older than $LOYALTY_LOG_KEEP_DAYS (30) removed;
# - the exit code to the alert hook: a run that ends failed (1) or partial (2) alerts by itself through
#   [loyalty] alert_command / alert_webhook; when the process died without reporting (killed, out of memory,
#   a config error before the run began) this wrapper sends the alert with the tail of the log;
# - its own exit code is the run's, so cron's MAILTO (if any) and monitoring see it too.
#
# Settings (environment, all optional): LOYALTY_PROJECT_DIR (the checkout with .dlt/; default: two levels above this
# script), LOYALTY_VENV (default <project>/.venv), LOYALTY_LOG_DIR, LOYALTY_LOG_KEEP_DAYS, LOYALTY_LOG_FORMAT
# (text | json), LOYALTY_LOCK_FILE (default <log dir>/loyalty-etl-cron.lock).
set -uo pipefail

project=${LOYALTY_PROJECT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
venv=${LOYALTY_VENV:-$project/.venv}
log_dir=${LOYALTY_LOG_DIR:-$project/logs}
keep_days=${LOYALTY_LOG_KEEP_DAYS:-30}
log_format=${LOYALTY_LOG_FORMAT:-text}
lock_file=${LOYALTY_LOCK_FILE:-$log_dir/loyalty-etl-cron.lock}
[ $# -gt 0 ] || set -- run

# .dlt/config.toml and .dlt/secrets.toml are found relative to the working directory, as is a relative warehouse path
cd "$project" || { echo "loyalty-etl-cron: project dir $project not found" >&2; exit 1; }
mkdir -p "$log_dir" || exit 1
umask 027  # the log names customers; keep it from other users

log="$log_dir/loyalty-etl-$(date -u +%Y%m%dT%H%M%SZ)-$1.log"
ln -sfn "$(basename "$log")" "$log_dir/latest.log"
note() { printf '%s loyalty-etl-cron: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$log"; }

reported=$(mktemp "${TMPDIR:-/tmp}/loyalty-etl-reported.XXXXXX") && rm -f "$reported"
exec 9>>"$lock_file"
if ! flock -n 9; then
  note "previous run still holds $lock_file; not starting"
  rc=75
else
  note "start: loyalty-etl $*"
  # -v: INFO events (one line each) go to the log; progress writes a plain line every few seconds (no terminal)
  LOYALTY_ALERT_REPORTED_FILE=$reported "$venv/bin/loyalty-etl" --log-format "$log_format" -v "$@" >>"$log" 2>&1 </dev/null
  rc=$?
  flock -u 9
fi
note "exit code $rc"

if [ "$rc" -ne 0 ] && [ ! -s "$reported" ]; then
  "$venv/bin/python" -m pipelines.alerts --exit-code "$rc" --command "$1" --log "$log" >>"$log" 2>&1 \
    || note "alert hook failed"
fi
rm -f "$reported"
find "$log_dir" -maxdepth 1 -name 'loyalty-etl-*.log' -mtime +"$keep_days" -delete 2>/dev/null
exit "$rc"

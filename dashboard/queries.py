"""Every question the dashboard asks the warehouse, in one place.

The mart and column names of the `loyalty` schema (docs/architecture.md, "Marts") appear only in this module, so a
renamed mart or column is one edit here. Each function returns a `db.Result` whose DataFrame has the column names
the pages display. It doubles as a reading guide: which mart answers which question.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dashboard.db import Result, query
from pipelines.registry import names as source_names

MARTS = "loyalty"
RAW = "loyalty_raw"
LEDGER = f"{MARTS}.fct_points_ledger"
CUSTOMERS = f"{MARTS}.dim_customers"
DAILY = f"{MARTS}.agg_customer_points_daily"
STORES = f"{MARTS}.agg_store_points_monthly"
NETWORK = f"{MARTS}.agg_transfer_network"
EXPIRING = f"{MARTS}.agg_points_expiring"
RUNS = "runs"
SYNC_ISSUES = "sync_issues"
SYNC_STATE = "_customer_sync_state"

SYSTEMS = tuple(source_names())  # every registered source (pipelines/registry.py)
MOVEMENT_TYPES = ("earn", "redeem", "expire", "transfer_in", "transfer_out", "adjust", "other")


def data_range(path: Path | None = None) -> Result:
    """First and last local day with a movement (the dashboard anchors its periods on the data, not on today)."""
    return query(f"select min(occurred_on) as first_day, max(occurred_on) as last_day from {LEDGER}", path=path)


# --- Overview: agg_customer_points_daily answers "how much moved in a period" -----------------------------------------

def period_totals(start: dt.date, end: dt.date, path: Path | None = None) -> Result:
    """Totals for local days start..end inclusive, one row per system; magnitudes are positive. Active customers
    add up across systems because a customer key includes its system."""
    return query(
        f"""
        select source_system,
               coalesce(sum(earned), 0)          as issued,
               coalesce(sum(redeemed), 0)        as redeemed,
               coalesce(sum(expired), 0)         as expired,
               coalesce(sum(transferred_in), 0)  as transferred,
               count(distinct customer_key)      as active_customers,
               coalesce(sum(net_points), 0)      as net
        from {DAILY}
        where activity_on between ? and ?
        group by source_system
        order by source_system
        """,
        (start, end), path=path,
    )


def daily_totals(start: dt.date, end: dt.date, path: Path | None = None) -> Result:
    """The same figures per local day, both systems together (the small charts under the overview figures)."""
    return query(
        f"""
        select activity_on as day, sum(earned) as issued, sum(redeemed) as redeemed, sum(expired) as expired,
               sum(transferred_in) as transferred, count(distinct customer_key) as active_customers
        from {DAILY}
        where activity_on between ? and ?
        group by all
        order by day
        """,
        (start, end), path=path,
    )


# --- Trends: the ledger by day / month and movement type ---------------------------------------------------------

def movements_by_type(start: dt.date, end: dt.date, grain: str, path: Path | None = None) -> Result:
    """Points per period (`day` or `month`) and movement type, signed, for local days start..end."""
    if grain not in ("day", "month"):
        raise ValueError(f"grain must be day or month, not {grain!r}")
    bucket = "occurred_on" if grain == "day" else "date_trunc('month', occurred_on)::date"
    return query(
        f"""
        select {bucket} as period, movement_type, sum(points) as points, count(*) as movements
        from {LEDGER}
        where occurred_on between ? and ?
        group by all
        order by period, movement_type
        """,
        (start, end), path=path,
    )


# --- Stores and partners: agg_store_points_monthly (CareCloud) --------------------------------------------------------

def store_totals(start_month: dt.date, end_month: dt.date, path: Path | None = None) -> Result:
    """Per store, the months start_month..end_month (first days of months) together."""
    return query(
        f"""
        select coalesce(store_id, '(no store)') as store, sum(earned) as earned, sum(redeemed) as redeemed,
               sum(expired) as expired, sum(net_points) as net, sum(movements) as movements,
               sum(purchase_value) as purchase_value
        from {STORES}
        where month_start between ? and ?
        group by all
        order by earned desc, store
        """,
        (start_month, end_month), path=path,
    )


def partner_totals(start_month: dt.date, end_month: dt.date, path: Path | None = None) -> Result:
    return query(
        f"""
        select coalesce(partner_id, '(no partner)') as partner, sum(earned) as earned, sum(redeemed) as redeemed,
               sum(net_points) as net, sum(movements) as movements, count(distinct store_id) as stores
        from {STORES}
        where month_start between ? and ?
        group by all
        order by earned desc, partner
        """,
        (start_month, end_month), path=path,
    )


def store_months(path: Path | None = None) -> Result:
    return query(f"select distinct month_start as month from {STORES} order by month", path=path)


def store_monthly(start_month: dt.date, end_month: dt.date, path: Path | None = None) -> Result:
    """Earned and redeemed per month, all stores together (for the chart)."""
    return query(
        f"""
        select month_start as month, sum(earned) as earned, sum(redeemed) as redeemed
        from {STORES}
        where month_start between ? and ?
        group by all
        order by month
        """,
        (start_month, end_month), path=path,
    )


# --- Transfers: agg_transfer_network (pairs) and the ledger (volume over time) ----------------------------------------

def top_flows(limit: int, path: Path | None = None) -> Result:
    return query(
        f"""
        select coalesce(sender_name, sender_id) as sender, sender_id,
               coalesce(receiver_name, receiver_id) as receiver, receiver_id,
               transfers, points_transferred as points, first_transfer_at, last_transfer_at, program_names
        from {NETWORK}
        order by points_transferred desc, transfers desc, edge_key
        limit ?
        """,
        (limit,), path=path,
    )


def network_totals(path: Path | None = None) -> Result:
    return query(
        f"""
        select count(*) as pairs, coalesce(sum(transfers), 0) as transfers,
               coalesce(sum(points_transferred), 0) as points,
               count(distinct sender_id) as senders, count(distinct receiver_id) as receivers
        from {NETWORK}
        """,
        path=path,
    )


def transfer_volume(grain: str, path: Path | None = None) -> Result:
    """Transfers and points moved per week or month (the receiving side of each transfer, so each counts once)."""
    if grain not in ("week", "month"):
        raise ValueError(f"grain must be week or month, not {grain!r}")
    return query(
        f"""
        select date_trunc('{grain}', occurred_on)::date as period, count(*) as transfers, sum(points) as points
        from {LEDGER}
        where movement_type = 'transfer_in'
        group by all
        order by period
        """,
        path=path,
    )


# --- Expirations: agg_points_expiring -------------------------------------------------------------------------------

def expiring_weekly(weeks: int, path: Path | None = None) -> Result:
    """Points expiring per week (weeks counted from the mart's as-of date), gross and capped at the balance."""
    return query(
        f"""
        select as_of_date + (7 * (days_until_expiration // 7))::int as week_from,
               count(distinct customer_key) as customers,
               sum(expiring_points) as expiring_points,
               sum(expiring_points_capped) as expiring_points_capped
        from {EXPIRING}
        where days_until_expiration < 7 * ?
        group by all
        order by week_from
        """,
        (weeks,), path=path,
    )


def expiring_totals(weeks: int, path: Path | None = None) -> Result:
    return query(
        f"""
        select count(distinct customer_key) as customers, coalesce(sum(expiring_points), 0) as expiring_points,
               coalesce(sum(expiring_points_capped), 0) as expiring_points_capped
        from {EXPIRING}
        where days_until_expiration < 7 * ?
        """,
        (weeks,), path=path,
    )


def expiring_customers(weeks: int, limit: int, path: Path | None = None) -> Result:
    return query(
        f"""
        select customer_id, source_system, min(expires_on) as next_expiration,
               sum(expiring_points_capped) as expiring_points_capped, sum(expiring_points) as expiring_points,
               max(current_balance) as current_balance
        from {EXPIRING}
        where days_until_expiration < 7 * ?
        group by all
        order by expiring_points_capped desc, customer_id
        limit ?
        """,
        (weeks, limit), path=path,
    )


def expiring_as_of(path: Path | None = None) -> Result:
    return query(f"select max(as_of_date) as as_of_date, count(*) as rows from {EXPIRING}", path=path)


# --- Customer lookup: dim_customers + the ledger ----------------------------------------------------------------

def customer(system: str, typed_id: str, path: Path | None = None) -> Result:
    """The customer by its id in the marts, or for Capillary also by external id or the identifier the pipeline
    queried it with (people know those, not the entity id); exact id matches first."""
    return query(
        f"""
        select customer_id, source_system, full_name, external_id, queried_identifiers, first_activity_at,
               last_activity_at, movements, lifetime_earned, lifetime_redeemed, lifetime_expired,
               lifetime_transferred_in, lifetime_transferred_out, current_balance
        from {CUSTOMERS}
        where source_system = $1
          and (customer_id = $2 or external_id = $2
               or list_contains(string_split(coalesce(queried_identifiers, ''), ', '), $2))
        order by customer_id = $2 desc, customer_id
        limit 2
        """,
        (system, typed_id), path=path,
    )


def customer_ledger(system: str, customer_id: str, path: Path | None = None) -> Result:
    """Every movement of one customer, oldest first, with the running balance after it."""
    return query(
        f"""
        select occurred_at, occurred_on, movement_type, points,
               sum(points) over (order by occurred_at, ledger_key rows unbounded preceding) as balance,
               operation_type, store_id, partner_id, program_name, transfer_id, counterparty_id, note, expires_on,
               ledger_key
        from {LEDGER}
        where source_system = ? and customer_id = ?
        order by occurred_at, ledger_key
        """,
        (system, customer_id), path=path,
    )


def top_customers(system: str, limit: int, path: Path | None = None) -> Result:
    """Suggestions for the lookup box: the most active customers of a system."""
    return query(
        f"""
        select customer_id from {CUSTOMERS}
        where source_system = ?
        order by movements desc, customer_id
        limit ?
        """,
        (system, limit), path=path,
    )


# --- Data health: run bookkeeping in loyalty_raw (optional: absent before the first run) --------------------------

def raw_tables(path: Path | None = None) -> Result:
    """Tables present in the raw schema: the bookkeeping ones appear with the first run."""
    return query(
        "select table_name from information_schema.tables where table_schema = ? order by table_name",
        (RAW,), path=path,
    )


def last_runs(limit: int, path: Path | None = None) -> Result:
    return query(
        f"""
        select started_at, ended_at, run_id, command, status, exit_code, duration_s, customers_done,
               customers_failed, records, requests, retries, http_429, models, error
        from {RAW}.{RUNS}
        order by started_at desc
        limit ?
        """,
        (limit,), path=path,
    )


def freshness(path: Path | None = None) -> Result:
    """Per source: the newest movement in the ledger and how many customers it covers."""
    return query(
        f"""
        select source_system as source, max(occurred_at) as newest_movement, count(*) as movements,
               count(distinct customer_key) as customers
        from {LEDGER}
        group by all
        order by source
        """,
        path=path,
    )


def sync_progress(path: Path | None = None) -> Result:
    """Per source, from the per-customer state: the oldest and newest completed window end and failing counts."""
    return query(
        f"""
        select source, count(*) as customers, min(last_success_end) as oldest_synced_to,
               max(last_success_end) as newest_synced_to,
               count(*) filter (where consecutive_failures > 0) as failing
        from {RAW}.{SYNC_STATE}
        group by all
        order by source
        """,
        path=path,
    )


def failing_customers(limit: int, path: Path | None = None) -> Result:
    return query(
        f"""
        select source, customer_id, consecutive_failures, last_attempt_at, last_success_end, last_error
        from {RAW}.{SYNC_STATE}
        where consecutive_failures > 0
        order by consecutive_failures desc, last_attempt_at desc, source, customer_id
        limit ?
        """,
        (limit,), path=path,
    )


def issue_counts(path: Path | None = None) -> Result:
    return query(
        f"""
        select source, code, count(*) as issues, count(distinct customer_id) as customers,
               min(occurred_at) as first_seen, max(occurred_at) as last_seen, any_value(message) as example
        from {RAW}.{SYNC_ISSUES}
        group by source, code
        order by issues desc, source, code
        """,
        path=path,
    )


def recent_issues(limit: int, path: Path | None = None) -> Result:
    return query(
        f"""
        select occurred_at, source, customer_id, code, message, run_id
        from {RAW}.{SYNC_ISSUES}
        order by occurred_at desc
        limit ?
        """,
        (limit,), path=path,
    )

"""Data health: the last runs, freshness per source and the customers that keep failing (run bookkeeping in
`loyalty_raw`; each part is left out with a note while its table does not exist yet)."""

from __future__ import annotations

import streamlit as st

from dashboard import queries, ui

st.title("Data health")

raw = set(ui.load(queries.raw_tables)["table_name"])

st.subheader("Last runs")
if queries.RUNS in raw:
    runs = ui.naive_local(ui.load(queries.last_runs, 20), "started_at", "ended_at")
    if runs.empty:
        st.info("No runs recorded yet.")
    else:
        last = runs.iloc[0]
        c1, c2, c3, c4 = st.columns([1, 2, 1, 1])
        c1.metric("Last run", str(last["status"]).upper(), border=True)
        c2.metric("Started", ui.local_time(last["started_at"]), border=True)
        c3.metric("Duration", f"{float(last['duration_s'] or 0):,.1f} s", border=True)
        c4.metric("Records", ui.count(last["records"]), border=True)
        st.dataframe(
            runs, hide_index=True,
            column_config={**ui.time_columns("started_at", "ended_at"),
                           **ui.number_columns("duration_s", "customers_done", "customers_failed", "records",
                                               "requests", "retries", "http_429")},
        )
else:
    st.info("No run history in this warehouse yet (`loyalty_raw.runs` appears with the first `loyalty-etl run`).")

st.subheader("Freshness per source")
fresh = ui.naive_local(ui.load(queries.freshness), "newest_movement")
if queries.SYNC_STATE in raw:
    progress = ui.naive_local(ui.load(queries.sync_progress), "oldest_synced_to", "newest_synced_to")
    fresh = fresh.merge(progress, how="outer", on="source", suffixes=("", "_synced"))
st.dataframe(
    fresh, hide_index=True,
    column_config={**ui.time_columns("newest_movement", "oldest_synced_to", "newest_synced_to"),
                   **ui.number_columns("movements", "customers", "customers_synced", "failing")},
)
st.caption("Newest movement: the latest point movement in the ledger. Synced to: how far each customer's "
           "completed load window reaches (oldest = the customer furthest behind).")

st.subheader("Failing customers")
if queries.SYNC_STATE in raw:
    failing = ui.naive_local(ui.load(queries.failing_customers, 200), "last_attempt_at", "last_success_end")
    if failing.empty:
        st.success("No customer is failing.")
    else:
        st.dataframe(failing, hide_index=True,
                     column_config=ui.time_columns("last_attempt_at", "last_success_end"))
else:
    st.info("No per-customer sync state yet.")

if queries.SYNC_ISSUES in raw:
    st.subheader("Sync issues")
    st.caption("Records the load kept but flagged (bad fields, unknown customers, ...), per kind.")
    kinds = ui.naive_local(ui.load(queries.issue_counts), "first_seen", "last_seen")
    if kinds.empty:
        st.success("No issues recorded.")
    else:
        st.dataframe(kinds, hide_index=True,
                     column_config={**ui.time_columns("first_seen", "last_seen"),
                                    **ui.number_columns("issues", "customers")})
        issues = ui.naive_local(ui.load(queries.recent_issues, 100), "occurred_at")
        with st.expander("The 100 most recent issues"):
            st.dataframe(issues, hide_index=True, column_config=ui.time_columns("occurred_at"))

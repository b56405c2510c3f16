"""Customer lookup: one customer's ledger and running balance, from either system (`dim_customers`, the ledger)."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboard import queries, ui

st.title("Customer lookup")

left, right = st.columns([1, 3])
with left:
    system = st.radio("System", list(queries.SYSTEMS), horizontal=True, key="customer_system")
with right:
    typed = st.text_input(
        "Customer id", key="customer_id",
        placeholder="CareCloud customer id; Capillary entity id, external id or the identifier loaded with",
    ).strip()

suggestions = ui.load(queries.top_customers, system, 10)
if not typed:
    if suggestions.empty:
        st.info(f"No {system} customers in the warehouse yet.")
        st.stop()
    typed = str(suggestions["customer_id"].iloc[0])
    st.caption(f"Showing the most active {system} customer. Others: "
               + ", ".join(f"`{c}`" for c in suggestions["customer_id"].iloc[1:]))

profile = ui.load(queries.customer, system, typed)
if profile.empty:
    st.warning(f"No {system} customer with id `{typed}`.")
    st.stop()
p = profile.iloc[0]
if len(profile) > 1 and p["customer_id"] != typed:
    st.caption(f"More than one {system} customer matches `{typed}`; showing `{p['customer_id']}`.")
customer_id = str(p["customer_id"])
name = f" — {p['full_name']}" if isinstance(p["full_name"], str) and p["full_name"].strip() else ""
st.subheader(f"{system} customer {customer_id}{name}")
st.caption(f"Active from {ui.local_time(p['first_activity_at'])} to {ui.local_time(p['last_activity_at'])}, "
           f"{ui.count(p['movements'])} movements.")

cols = st.columns(3) + st.columns(3)
for col, (label, column) in zip(cols, [
    ("Current balance", "current_balance"),
    ("Earned", "lifetime_earned"),
    ("Redeemed", "lifetime_redeemed"),
    ("Expired", "lifetime_expired"),
    ("Transferred in", "lifetime_transferred_in"),
    ("Transferred out", "lifetime_transferred_out"),
]):
    col.metric(label, ui.points(p[column]), border=True)

ledger = ui.naive_local(ui.load(queries.customer_ledger, system, customer_id), "occurred_at")
st.altair_chart(
    alt.Chart(ledger).mark_line(interpolate="step-after", point=len(ledger) <= 60).encode(
        x=alt.X("occurred_at:T", title=None),
        y=alt.Y("balance:Q", title="Balance", axis=alt.Axis(format=",.0f")),
        tooltip=[alt.Tooltip("occurred_at:T", title="when", format="%Y-%m-%d %H:%M"), "movement_type:N",
                 alt.Tooltip("points:Q", format=",.2~f"), alt.Tooltip("balance:Q", format=",.2~f")],
    ).properties(height=280),
    width="stretch",
)

st.subheader("Ledger (newest first)")
st.dataframe(
    ledger.iloc[::-1], hide_index=True,
    column_config={**ui.number_columns("points", "balance", "transfer_id"), **ui.time_columns("occurred_at"),
                   **ui.date_columns("occurred_on", "expires_on")},
)

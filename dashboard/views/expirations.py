"""Expirations: points that expire in the coming weeks, from `agg_points_expiring`."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboard import queries, ui

st.title("Expirations")

as_of = ui.load(queries.expiring_as_of).iloc[0]
if int(as_of["rows"]) == 0:
    st.info("No upcoming expirations in the warehouse (they come from CareCloud earn records that carry an "
            "expiration date).")
    st.stop()
weeks = st.select_slider("Coming weeks", options=[4, 8, 12, 26, 52], value=12, key="expirations_weeks")
weekly = ui.load(queries.expiring_weekly, weeks)
st.caption(
    f"From {ui.day(as_of['as_of_date'])} (the day the marts were built). \"Expiring\" is capped at what each "
    "customer holds: points already spent cannot expire. Gross is what was earned with that date."
)

totals = ui.load(queries.expiring_totals, weeks).iloc[0]
c1, c2, c3 = st.columns(3)
c1.metric(f"Points expiring in {weeks} weeks", ui.points(totals["expiring_points_capped"]), border=True)
c2.metric("Gross points with those dates", ui.points(totals["expiring_points"]), border=True)
c3.metric("Customers affected", ui.count(totals["customers"]), border=True)

weekly["week"] = [ui.day(d) for d in weekly["week_from"]]
st.altair_chart(
    alt.Chart(weekly).mark_bar().encode(
        x=alt.X("week:O", title="Week starting", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("expiring_points_capped:Q", title="Points expiring", axis=alt.Axis(format=",.0f")),
        tooltip=[alt.Tooltip("week:O", title="week from"),
                 alt.Tooltip("expiring_points_capped:Q", title="expiring", format=",.0f"),
                 alt.Tooltip("expiring_points:Q", title="gross", format=",.0f"),
                 alt.Tooltip("customers:Q", format=",")],
    ).properties(height=320),
    width="stretch",
)

st.subheader("Customers with the most points expiring")
customers = ui.load(queries.expiring_customers, weeks, 50)
st.dataframe(
    customers, hide_index=True,
    column_config={**ui.number_columns("expiring_points_capped", "expiring_points", "current_balance"),
                   **ui.date_columns("next_expiration")},
)

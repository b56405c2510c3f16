"""Trends: daily and monthly point movements by type, from `fct_points_ledger`."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboard import queries, ui

st.title("Trends")

first_day, last_day = ui.data_days()

left, right = st.columns([3, 1])
with left:
    start, end = ui.period_picker(first_day, last_day, key="trends")
with right:
    grain = st.radio("Per", ["day", "month"], horizontal=True, key="trends_grain")
frame = ui.load(queries.movements_by_type, start, end, grain)
if frame.empty:
    st.info("No movements in this period.")
    st.stop()
st.caption(f"Local days {ui.day(start)} – {ui.day(end)}. Redemptions, expirations and outgoing transfers count "
           "below zero; each Capillary transfer shows once out and once in.")

order = list(queries.MOVEMENT_TYPES)
chart = (
    alt.Chart(frame)
    .mark_bar()
    .encode(
        x=alt.X("period:T", title=None, timeUnit="yearmonthdate" if grain == "day" else "yearmonth"),
        y=alt.Y("sum(points):Q", title="Points", axis=alt.Axis(format=",.0f")),
        color=alt.Color("movement_type:N", title="Movement", sort=order,
                        scale=alt.Scale(domain=order, scheme="tableau10")),
        tooltip=[alt.Tooltip("period:T", format="%Y-%m-%d" if grain == "day" else "%Y-%m"), "movement_type:N",
                 alt.Tooltip("sum(points):Q", title="points", format=",.0f"),
                 alt.Tooltip("sum(movements):Q", title="movements", format=",")],
    )
    .properties(height=380)
)
st.altair_chart(chart, width="stretch")

st.subheader(f"Points per {grain} and movement type")
table = frame.pivot_table(index="period", columns="movement_type", values="points", aggfunc="sum", fill_value=0)
table = table.reindex(columns=[t for t in order if t in table.columns]).sort_index(ascending=False).reset_index()
table["period"] = table["period"].dt.strftime("%Y-%m-%d" if grain == "day" else "%Y-%m")
st.dataframe(table, hide_index=True, column_config=ui.number_columns(*order))

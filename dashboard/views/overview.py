"""Overview: points issued, redeemed, expired and transferred, and active customers, against the previous period.
Reads `agg_customer_points_daily` (one row per customer and active day)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import queries, ui

st.title("Loyalty points overview")

first_day, last_day = ui.data_days()

start, end = ui.period_picker(first_day, last_day, key="overview")
prev_start, prev_end = ui.previous_period(start, end)
current = ui.load(queries.period_totals, start, end)
previous = ui.load(queries.period_totals, prev_start, prev_end)
# every day of the period, quiet days as zero, so the small charts under the figures keep a true time axis
daily = ui.load(queries.daily_totals, start, end)
daily = daily.set_index(pd.to_datetime(daily["day"])).reindex(pd.date_range(start, end), fill_value=0)
st.caption(
    f"Local days {ui.day(start)} – {ui.day(end)}, compared with {ui.day(prev_start)} – {ui.day(prev_end)}. "
    f"Data runs to {ui.day(last_day)}."
)

FIGURES = [  # column, label, delta colour (is more of it good news?)
    ("issued", "Points issued", "normal"),
    ("redeemed", "Points redeemed", "normal"),
    ("expired", "Points expired", "inverse"),
    ("transferred", "Points transferred", "off"),
]
cols = st.columns(len(FIGURES) + 1)
for col, (name, label, colour) in zip(cols, FIGURES):
    now_v, before_v = float(current[name].sum()), float(previous[name].sum())
    col.metric(label, ui.points(now_v), ui.delta(now_v, before_v), delta_color=colour, border=True,
               chart_data=daily[name].astype(float).tolist(), chart_type="bar")
active_now, active_before = int(current["active_customers"].sum()), int(previous["active_customers"].sum())
delta = ui.delta(active_now, active_before)
cols[-1].metric("Active customers", ui.count(active_now), delta, delta_color="normal", border=True,
                chart_data=daily["active_customers"].astype(float).tolist(), chart_type="bar")

names = {name: label for name, label, _ in FIGURES}
both = pd.concat([
    current.assign(period="This period"),
    previous.assign(period="Previous period"),
])
long = both.melt(id_vars=["period", "source_system"], value_vars=list(names), var_name="figure", value_name="points")
long["figure"] = long["figure"].map(names)
chart = (
    alt.Chart(long)
    .mark_bar()
    .encode(
        x=alt.X("figure:N", title=None, sort=list(names.values()), axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("period:N", sort=["Previous period", "This period"]),
        y=alt.Y("sum(points):Q", title="Points", axis=alt.Axis(format=",.0f")),
        color=alt.Color("period:N", sort=["Previous period", "This period"], title=None),
        tooltip=["period:N", "figure:N", alt.Tooltip("sum(points):Q", title="points", format=",.0f")],
    )
    .properties(height=320)
)
st.altair_chart(chart, width="stretch")

st.subheader("By system")
table = current.rename(columns={"source_system": "system"})[
    ["system", "issued", "redeemed", "expired", "transferred", "net", "active_customers"]
]
st.dataframe(
    table, hide_index=True,
    column_config=ui.number_columns("issued", "redeemed", "expired", "transferred", "net", "active_customers"),
)

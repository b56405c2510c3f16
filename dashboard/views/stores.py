"""Stores and partners: where CareCloud points are earned and spent, from `agg_store_points_monthly`."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboard import queries, ui

st.title("Stores and partners")

months = ui.load(queries.store_months)
if months.empty:
    st.info("No store movements yet (stores come from CareCloud point history).")
    st.stop()
options = [ui.as_date(m) for m in months["month"]]
default_from = options[max(0, len(options) - 12)]
start_month, end_month = st.select_slider(
    "Months", options=options, value=(default_from, options[-1]), format_func=lambda d: d.strftime("%Y-%m"),
    key="stores_months",
)
st.caption(f"CareCloud movements from {start_month:%Y-%m} to {end_month:%Y-%m}; Capillary transfers have no store.")

stores = ui.load(queries.store_totals, start_month, end_month)
partners = ui.load(queries.partner_totals, start_month, end_month)
monthly = ui.load(queries.store_monthly, start_month, end_month)

c1, c2, c3 = st.columns(3)
c1.metric("Stores with movements", ui.count(len(stores)), border=True)
c2.metric("Points earned in stores", ui.points(stores["earned"].sum()), border=True)
c3.metric("Points spent in stores", ui.points(stores["redeemed"].sum()), border=True)

TOP = 15
top = stores.head(TOP).melt(id_vars=["store"], value_vars=["earned", "redeemed"], var_name="kind",
                            value_name="points")
left, right = st.columns(2)
with left:
    st.subheader(f"Top {TOP} stores by points earned")
    st.altair_chart(
        alt.Chart(top).mark_bar().encode(
            y=alt.Y("store:N", sort=list(stores.head(TOP)["store"]), title=None, axis=alt.Axis(labelLimit=260)),
            x=alt.X("points:Q", title="Points", axis=alt.Axis(format=",.0f")),
            color=alt.Color("kind:N", title=None),
            yOffset="kind:N",
            tooltip=["store:N", "kind:N", alt.Tooltip("points:Q", format=",.0f")],
        ).properties(height=420),
        width="stretch",
    )
with right:
    st.subheader("Earned and spent per month")
    long = monthly.melt(id_vars=["month"], value_vars=["earned", "redeemed"], var_name="kind", value_name="points")
    st.altair_chart(
        alt.Chart(long).mark_line(point=True).encode(
            x=alt.X("month:T", timeUnit="yearmonth", title=None),
            y=alt.Y("points:Q", title="Points", axis=alt.Axis(format=",.0f")),
            color=alt.Color("kind:N", title=None),
            tooltip=[alt.Tooltip("month:T", format="%Y-%m"), "kind:N", alt.Tooltip("points:Q", format=",.0f")],
        ).properties(height=420),
        width="stretch",
    )

st.subheader("Stores")
st.dataframe(stores, hide_index=True,
             column_config=ui.number_columns("earned", "redeemed", "expired", "net", "movements", "purchase_value"))
st.subheader("Partners")
st.dataframe(partners, hide_index=True,
             column_config=ui.number_columns("earned", "redeemed", "net", "movements", "stores"))

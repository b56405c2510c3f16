"""Transfers: the largest sender → receiver flows (`agg_transfer_network`) and transfer volume over time (the ledger)."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboard import queries, ui

st.title("Transfers")

totals = ui.load(queries.network_totals).iloc[0]
if int(totals["pairs"]) == 0:
    st.info("No Capillary transfers loaded yet.")
    st.stop()
c1, c2, c3, c4 = st.columns(4)
c1.metric("Points transferred", ui.points(totals["points"]), border=True)
c2.metric("Transfers", ui.count(totals["transfers"]), border=True)
c3.metric("Sender → receiver pairs", ui.count(totals["pairs"]), border=True)
c4.metric("Senders / receivers", f"{ui.count(totals['senders'])} / {ui.count(totals['receivers'])}", border=True)

limit = st.slider("Largest flows to show", min_value=5, max_value=100, value=20, step=5, key="transfers_limit")
flows = ui.naive_local(ui.load(queries.top_flows, limit), "first_transfer_at", "last_transfer_at")
flows["flow"] = flows["sender"].astype(str) + " → " + flows["receiver"].astype(str)

left, right = st.columns([3, 2])
with left:
    st.subheader(f"Largest {limit} flows")
    st.altair_chart(
        alt.Chart(flows.head(25)).mark_bar().encode(
            y=alt.Y("flow:N", sort="-x", title=None, axis=alt.Axis(labelLimit=260)),
            x=alt.X("points:Q", title="Points", axis=alt.Axis(format=",.0f")),
            tooltip=["flow:N", alt.Tooltip("points:Q", format=",.0f"), alt.Tooltip("transfers:Q", format=",")],
        ).properties(height=max(200, 22 * min(len(flows), 25))),
        width="stretch",
    )
with right:
    st.subheader("Volume over time")
    grain = st.radio("Per", ["week", "month"], index=1, horizontal=True, key="transfers_grain")
    volume = ui.load(queries.transfer_volume, grain)
    base = alt.Chart(volume).encode(x=alt.X("period:T", title=None))
    st.altair_chart(
        alt.layer(
            base.mark_bar(opacity=0.7).encode(
                y=alt.Y("points:Q", title="Points", axis=alt.Axis(format=",.0f")),
                tooltip=[alt.Tooltip("period:T", format="%Y-%m-%d"), alt.Tooltip("points:Q", format=",.0f"),
                         alt.Tooltip("transfers:Q", format=",")],
            ),
            base.mark_line(color="#e45756").encode(y=alt.Y("transfers:Q", title="Transfers")),
        ).resolve_scale(y="independent").properties(height=300),
        width="stretch",
    )

st.subheader("Flows")
st.dataframe(
    flows.drop(columns=["flow"]), hide_index=True,
    column_config={**ui.number_columns("transfers", "points"),
                   **ui.time_columns("first_transfer_at", "last_transfer_at")},
)

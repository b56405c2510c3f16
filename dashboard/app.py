"""Entry point of the dashboard: `loyalty-etl dashboard` runs `streamlit run dashboard/app.py`.

The warehouse: the file in env `LOYALTY_WAREHOUSE_PATH` (set by the command from the project settings), else the
project's configured warehouse (a DuckLake: `[loyalty] warehouse = "ducklake"`); the display time zone from
`LOYALTY_DASHBOARD_TIMEZONE` (default `pipelines.windows.LOCAL_TIMEZONE`).
"""

from __future__ import annotations

import streamlit as st

# an installed package (pyproject.toml), so found by name although Streamlit runs this file as a script
from dashboard import db, ui

st.set_page_config(page_title="Loyalty points", page_icon="⭐", layout="wide")

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/trends.py", title="Trends", icon=":material/trending_up:"),
    st.Page("views/stores.py", title="Stores and partners", icon=":material/storefront:"),
    st.Page("views/transfers.py", title="Transfers", icon=":material/swap_horiz:"),
    st.Page("views/expirations.py", title="Expirations", icon=":material/hourglass_bottom:"),
    st.Page("views/customer.py", title="Customer lookup", icon=":material/person_search:"),
    st.Page("views/health.py", title="Data health", icon=":material/monitor_heart:"),
]

page = st.navigation(PAGES)
with st.sidebar:
    st.caption(f"Warehouse `{db.describe()}` (read-only)")
    st.caption(f"Times and dates in {db.timezone()}")
ui.reset_page_flags()
page.run()

"""The raw tables of docs/architecture.md "Raw tables", for dbt tests and the dbt benchmark (bench/incremental.py)
that fill them by hand instead of running the pipeline."""

from __future__ import annotations

import duckdb


def create_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Empty loyalty_raw tables with the columns the pipeline writes (the sources of the dbt project)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS loyalty_raw")
    con.execute("""
        CREATE TABLE loyalty_raw.carecloud_point_history (
            record_key VARCHAR, customer_id VARCHAR, point_amount DOUBLE, point_operation_type VARCHAR,
            point_operation_note VARCHAR, point_type_id VARCHAR, partner_id VARCHAR, store_id VARCHAR,
            point_history_record_time TIMESTAMP, recorded_at TIMESTAMPTZ, extended_data_raw VARCHAR,
            extended_data__date_of_points_expiration VARCHAR, extended_data__purchase_value DOUBLE,
            extended_data__external_purchase_id VARCHAR, _loaded_run_id VARCHAR, _dlt_load_id VARCHAR,
            _dlt_id VARCHAR)""")
    con.execute("""
        CREATE TABLE loyalty_raw.capillary_points_transfers (
            transfer_id BIGINT, from_entity_id BIGINT, from_entity_type VARCHAR, to_entity_id BIGINT,
            to_entity_type VARCHAR, points_transferred DOUBLE, points_transfer_date VARCHAR,
            transferred_at TIMESTAMPTZ, notes VARCHAR, program_name VARCHAR, from_user_id BIGINT,
            to_user_id BIGINT, _dlt_load_id VARCHAR, _dlt_id VARCHAR)""")
    con.execute("""
        CREATE TABLE loyalty_raw.capillary_customer_transfers (
            customer_id VARCHAR, transfer_id BIGINT, transfer_type VARCHAR, points_signed DOUBLE,
            _dlt_load_id VARCHAR, _dlt_id VARCHAR)""")
    con.execute("""
        CREATE TABLE loyalty_raw.capillary_transfer_parties (
            user_id BIGINT, first_name VARCHAR, last_name VARCHAR, external_id VARCHAR,
            _dlt_load_id VARCHAR, _dlt_id VARCHAR)""")

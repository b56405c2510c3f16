{#- Which dbt invocation last wrote a row of an incremental model. The incremental proof (tests/test_models.py)
    and the daily model's change detection read these. -#}
{% macro audit_columns() -%}
    cast('{{ run_started_at.isoformat() }}' as timestamptz) as _dbt_updated_at,
    '{{ invocation_id }}' as _dbt_invocation_id
{%- endmacro %}

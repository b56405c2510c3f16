{#- The schema is exactly the configured custom schema (`loyalty`, `loyalty_staging`), not dbt's default
    `<target schema>_<custom schema>`: dashboards and docs name `loyalty.fct_points_ledger` directly. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}

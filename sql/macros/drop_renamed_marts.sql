{#- Marts that were renamed (customer_points_daily -> agg_customer_points_daily, ...). Their old tables would
    otherwise stay in the warehouse with figures frozen at the rename. -#}
{% macro drop_renamed_marts() -%}
    {%- set marts_schema = generate_schema_name('loyalty', none) -%}
    {%- for old_name in ['customer_points_daily', 'store_points_monthly', 'transfer_network', 'points_expiring'] %}
        drop table if exists {{ marts_schema }}.{{ old_name }};
    {%- endfor %}
{%- endmacro %}

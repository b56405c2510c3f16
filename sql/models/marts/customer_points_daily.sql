{{ config(
    materialized='incremental',
    incremental_strategy='merge',
    unique_key='customer_day_key',
    on_schema_change='append_new_columns',
) }}
{#- Incremental: only customers with ledger rows written since this table was last written are recomputed, from
    their earliest changed day on, so a late record landing in an old day corrects every later running balance
    of that customer and nothing else is touched. -#}

with
{% if is_incremental() %}
changed as (
    select customer_key, min(occurred_on) as from_day
    from {{ ref('fct_points_ledger') }}
    where _dbt_updated_at > (
        select coalesce(max(_dbt_updated_at), cast('1900-01-01 00:00:00+00' as timestamptz)) from {{ this }}
    )
    group by customer_key
),
{% endif %}

per_day as (
    select
        l.customer_key,
        l.source_system,
        l.customer_id,
        l.occurred_on as activity_on,
        count(*) as movements,
        coalesce(sum(l.points) filter (where l.movement_type = 'earn'), 0) as earned,
        coalesce(-sum(l.points) filter (where l.movement_type = 'redeem'), 0) as redeemed,
        coalesce(-sum(l.points) filter (where l.movement_type = 'expire'), 0) as expired,
        coalesce(sum(l.points) filter (where l.movement_type = 'transfer_in'), 0) as transferred_in,
        coalesce(-sum(l.points) filter (where l.movement_type = 'transfer_out'), 0) as transferred_out,
        coalesce(sum(l.points) filter (where l.movement_type = 'adjust'), 0) as adjusted,
        coalesce(sum(l.points) filter (where l.movement_type = 'other'), 0) as other_points,
        sum(l.points) as net_points
    from {{ ref('fct_points_ledger') }} as l
    {% if is_incremental() %}
    where l.customer_key in (select customer_key from changed)
    {% endif %}
    group by l.customer_key, l.source_system, l.customer_id, l.occurred_on
),

balanced as (
    select
        *,
        sum(net_points) over (
            partition by customer_key order by activity_on rows between unbounded preceding and current row
        ) as running_balance
    from per_day
)

select
    b.customer_key || ':' || strftime(b.activity_on, '%Y-%m-%d') as customer_day_key,
    b.customer_key,
    b.source_system,
    b.customer_id,
    b.activity_on,
    b.movements,
    b.earned,
    b.redeemed,
    b.expired,
    b.transferred_in,
    b.transferred_out,
    b.adjusted,
    b.other_points,
    b.net_points,
    b.running_balance,
    {{ audit_columns() }}
from balanced as b
{% if is_incremental() %}
join changed as c
    on c.customer_key = b.customer_key and b.activity_on >= c.from_day
{% endif %}

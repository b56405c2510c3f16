-- CareCloud movements per store, partner and calendar month (local dates). Capillary transfers carry no store.
with int_points_ledger_pivoted as (
    select * from {{ ref('int_points_ledger_pivoted') }}
),

carecloud_movements as (
    select
        *,
        cast(date_trunc('month', occurred_on) as date) as month_start
    from int_points_ledger_pivoted
    where source_system = 'carecloud'
)

select
    coalesce(store_id, '-') || ':' || coalesce(partner_id, '-') || ':' || strftime(month_start, '%Y-%m')
        as store_month_key,
    store_id,
    partner_id,
    month_start,
    count(*) as movements,
    count(distinct customer_id) as customers,
    sum(earned) as earned,
    sum(redeemed) as redeemed,
    sum(expired) as expired,
    sum(adjusted + other_points) as adjusted,
    sum(points) as net_points,
    coalesce(sum(purchase_value), 0) as purchase_value
from carecloud_movements
group by store_id, partner_id, month_start

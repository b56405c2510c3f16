-- CareCloud movements per store, partner and calendar month (local dates). Capillary transfers carry no store.
with movements as (
    select *, cast(date_trunc('month', occurred_on) as date) as month_start
    from {{ ref('fct_points_ledger') }}
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
    coalesce(sum(points) filter (where movement_type = 'earn'), 0) as earned,
    coalesce(-sum(points) filter (where movement_type = 'redeem'), 0) as redeemed,
    coalesce(-sum(points) filter (where movement_type = 'expire'), 0) as expired,
    coalesce(sum(points) filter (where movement_type in ('adjust', 'other')), 0) as adjusted,
    sum(points) as net_points,
    coalesce(sum(purchase_value), 0) as purchase_value
from movements
group by store_id, partner_id, month_start

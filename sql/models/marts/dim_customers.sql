-- One row per customer and system, summarised from the ledger. Capillary rows are entities (customer ids as text)
-- enriched with the party names and the identifiers the pipeline queried them by.
with totals as (
    select
        customer_key,
        source_system,
        customer_id,
        min(occurred_at) as first_activity_at,
        max(occurred_at) as last_activity_at,
        min(occurred_on) as first_activity_on,
        max(occurred_on) as last_activity_on,
        count(*) as movements,
        coalesce(sum(points) filter (where movement_type = 'earn'), 0) as lifetime_earned,
        coalesce(-sum(points) filter (where movement_type = 'redeem'), 0) as lifetime_redeemed,
        coalesce(-sum(points) filter (where movement_type = 'expire'), 0) as lifetime_expired,
        coalesce(sum(points) filter (where movement_type = 'transfer_in'), 0) as lifetime_transferred_in,
        coalesce(-sum(points) filter (where movement_type = 'transfer_out'), 0) as lifetime_transferred_out,
        coalesce(sum(points) filter (where movement_type = 'adjust'), 0) as lifetime_adjusted,
        coalesce(sum(points) filter (where movement_type = 'other'), 0) as lifetime_other,
        sum(points) as current_balance
    from {{ ref('fct_points_ledger') }}
    group by customer_key, source_system, customer_id
),

identifiers as (
    select
        cast(entity_id as varchar) as customer_id,
        string_agg(distinct customer_id, ', ' order by customer_id) as queried_identifiers
    from {{ ref('stg_capillary__customer_transfers') }}
    where entity_id is not null
    group by entity_id
)

select
    t.customer_key,
    t.source_system,
    t.customer_id,
    p.full_name,
    p.external_id,
    i.queried_identifiers,
    t.first_activity_at,
    t.last_activity_at,
    t.first_activity_on,
    t.last_activity_on,
    t.movements,
    t.lifetime_earned,
    t.lifetime_redeemed,
    t.lifetime_expired,
    t.lifetime_transferred_in,
    t.lifetime_transferred_out,
    t.lifetime_adjusted,
    t.lifetime_other,
    t.current_balance
from totals as t
left join {{ ref('stg_capillary__transfer_parties') }} as p
    on t.source_system = 'capillary' and cast(p.user_id as varchar) = t.customer_id
left join identifiers as i
    on t.source_system = 'capillary' and i.customer_id = t.customer_id

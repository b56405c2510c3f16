-- One row per customer and system, summarised from the ledger. Capillary rows are entities (customer ids as text)
-- enriched with the party names and the identifiers the pipeline queried them by.
with int_points_ledger_pivoted as (
    select * from {{ ref('int_points_ledger_pivoted') }}
),

int_capillary__customer_transfers_with_entity as (
    select * from {{ ref('int_capillary__customer_transfers_with_entity') }}
),

stg_capillary__transfer_parties as (
    select * from {{ ref('stg_capillary__transfer_parties') }}
),

totals as (
    select
        customer_key,
        source_system,
        customer_id,
        min(occurred_at) as first_activity_at,
        max(occurred_at) as last_activity_at,
        min(occurred_on) as first_activity_on,
        max(occurred_on) as last_activity_on,
        count(*) as movements,
        sum(earned) as lifetime_earned,
        sum(redeemed) as lifetime_redeemed,
        sum(expired) as lifetime_expired,
        sum(transferred_in) as lifetime_transferred_in,
        sum(transferred_out) as lifetime_transferred_out,
        sum(adjusted) as lifetime_adjusted,
        sum(other_points) as lifetime_other,
        sum(points) as current_balance
    from int_points_ledger_pivoted
    group by customer_key, source_system, customer_id
),

queried_identifiers as (
    select
        cast(entity_id as varchar) as customer_id,
        string_agg(distinct customer_id, ', ' order by customer_id) as queried_identifiers
    from int_capillary__customer_transfers_with_entity
    where entity_id is not null
    group by entity_id
)

select
    totals.customer_key,
    totals.source_system,
    totals.customer_id,
    stg_capillary__transfer_parties.full_name,
    stg_capillary__transfer_parties.external_id,
    queried_identifiers.queried_identifiers,
    totals.first_activity_at,
    totals.last_activity_at,
    totals.first_activity_on,
    totals.last_activity_on,
    totals.movements,
    totals.lifetime_earned,
    totals.lifetime_redeemed,
    totals.lifetime_expired,
    totals.lifetime_transferred_in,
    totals.lifetime_transferred_out,
    totals.lifetime_adjusted,
    totals.lifetime_other,
    totals.current_balance
from totals
left join stg_capillary__transfer_parties
    on
        totals.source_system = 'capillary'
        and totals.customer_id = cast(stg_capillary__transfer_parties.user_id as varchar)
left join queried_identifiers
    on
        totals.source_system = 'capillary'
        and totals.customer_id = queried_identifiers.customer_id

-- Reconciliation: per Capillary entity, received and sent points and transfer counts in the ledger equal the raw
-- transfers table (every transfer once out of the sender and once into the receiver).
with raw_sides as (
    select
        cast(to_entity_id as varchar) as customer_id,
        abs(points_transferred) as points_in,
        0.0 as points_out,
        1 as transfers_in,
        0 as transfers_out
    from {{ source('capillary', 'points_transfers') }}
    union all
    select
        cast(from_entity_id as varchar) as customer_id,
        0.0 as points_in,
        abs(points_transferred) as points_out,
        0 as transfers_in,
        1 as transfers_out
    from {{ source('capillary', 'points_transfers') }}
),

raw as (
    select
        customer_id,
        sum(points_in) as points_in,
        sum(points_out) as points_out,
        sum(transfers_in) as transfers_in,
        sum(transfers_out) as transfers_out
    from raw_sides
    group by customer_id
),

ledger as (
    select
        customer_id,
        coalesce(sum(points) filter (where movement_type = 'transfer_in'), 0) as points_in,
        coalesce(-sum(points) filter (where movement_type = 'transfer_out'), 0) as points_out,
        count(*) filter (where movement_type = 'transfer_in') as transfers_in,
        count(*) filter (where movement_type = 'transfer_out') as transfers_out
    from {{ ref('fct_points_ledger') }}
    where source_system = 'capillary'
    group by customer_id
)

select
    coalesce(raw.customer_id, ledger.customer_id) as customer_id,
    raw.*,
    ledger.*
from raw
full outer join ledger on raw.customer_id = ledger.customer_id
where
    raw.transfers_in is distinct from ledger.transfers_in
    or raw.transfers_out is distinct from ledger.transfers_out
    or abs(coalesce(raw.points_in, 0) - coalesce(ledger.points_in, 0)) > 1e-6
    or abs(coalesce(raw.points_out, 0) - coalesce(ledger.points_out, 0)) > 1e-6

-- The ledger with its points split into one column per movement type, the one place that says which types
-- count as what: earned, redeemed, expired, transferred in and out as magnitudes (their sign is fixed by the
-- type), adjusted and other signed as on the ledger. Each is 0 on rows of another type, so the marts total them
-- with a plain sum at whatever grain they need.
with fct_points_ledger as (
    select * from {{ ref('fct_points_ledger') }}
)

select
    ledger_key,
    customer_key,
    source_system,
    customer_id,
    occurred_at,
    occurred_on,
    store_id,
    partner_id,
    purchase_value,
    points,
    case when movement_type = 'earn' then points else 0 end as earned,
    case when movement_type = 'redeem' then -points else 0 end as redeemed,
    case when movement_type = 'expire' then -points else 0 end as expired,
    case when movement_type = 'transfer_in' then points else 0 end as transferred_in,
    case when movement_type = 'transfer_out' then -points else 0 end as transferred_out,
    case when movement_type = 'adjust' then points else 0 end as adjusted,
    case when movement_type = 'other' then points else 0 end as other_points
from fct_points_ledger

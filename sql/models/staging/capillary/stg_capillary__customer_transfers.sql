-- One row per (queried customer identifier, transfer) as the API returned it. Which Capillary entity the
-- identifier stands for needs the transfer itself: int_capillary__customer_transfers_with_entity joins them.
with capillary_customer_transfers as (
    select * from {{ source('capillary', 'customer_transfers') }}
),

renamed as (
    select
        customer_id,
        cast(transfer_id as bigint) as transfer_id,
        upper(transfer_type) as transfer_type,
        cast(points_signed as double) as points_signed
    from capillary_customer_transfers
)

select
    customer_id || ':' || cast(transfer_id as varchar) as customer_transfer_key,
    customer_id,
    transfer_id,
    transfer_type,
    points_signed
from renamed

-- One row per (queried customer identifier, transfer): links the identifier the pipeline was given to the
-- Capillary entity id the ledger uses (the receiver for ADDITION, the sender for DEDUCTION).
with links as (
    select
        customer_id,
        cast(transfer_id as bigint) as transfer_id,
        upper(transfer_type) as transfer_type,
        cast(points_signed as double) as points_signed
    from {{ source('loyalty_raw', 'capillary_customer_transfers') }}
)

select
    links.customer_id || ':' || cast(links.transfer_id as varchar) as customer_transfer_key,
    links.customer_id,
    links.transfer_id,
    links.transfer_type,
    links.points_signed,
    case links.transfer_type
        when 'ADDITION' then t.to_entity_id
        when 'DEDUCTION' then t.from_entity_id
    end as entity_id
from links
left join {{ ref('stg_capillary__points_transfers') }} as t
    on links.transfer_id = t.transfer_id

-- One row per (queried customer identifier, transfer), linked to the Capillary entity id the ledger uses: the
-- receiver for ADDITION, the sender for DEDUCTION.
with stg_capillary__customer_transfers as (
    select * from {{ ref('stg_capillary__customer_transfers') }}
),

stg_capillary__points_transfers as (
    select * from {{ ref('stg_capillary__points_transfers') }}
)

select
    stg_capillary__customer_transfers.customer_transfer_key,
    stg_capillary__customer_transfers.customer_id,
    stg_capillary__customer_transfers.transfer_id,
    stg_capillary__customer_transfers.transfer_type,
    stg_capillary__customer_transfers.points_signed,
    case stg_capillary__customer_transfers.transfer_type
        when 'ADDITION' then stg_capillary__points_transfers.to_entity_id
        when 'DEDUCTION' then stg_capillary__points_transfers.from_entity_id
    end as entity_id
from stg_capillary__customer_transfers
left join stg_capillary__points_transfers
    on stg_capillary__customer_transfers.transfer_id = stg_capillary__points_transfers.transfer_id

-- One row per Capillary user that sent or received a transfer.
with capillary_transfer_parties as (
    select * from {{ source('capillary', 'transfer_parties') }}
)

select
    cast(user_id as bigint) as user_id,
    nullif(first_name, '') as first_name,
    nullif(last_name, '') as last_name,
    nullif(trim(coalesce(first_name, '') || ' ' || coalesce(last_name, '')), '') as full_name,
    nullif(external_id, '') as external_id
from capillary_transfer_parties

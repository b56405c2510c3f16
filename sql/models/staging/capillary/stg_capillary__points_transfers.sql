-- One row per Capillary points transfer (a transfer is seen by both parties; the loader merges it on transfer_id,
-- so the raw table holds it once; the unique test checks that rather than a dedupe hiding damage).
with capillary_points_transfers as (
    select * from {{ source('capillary', 'points_transfers') }}
)

select
    cast(transfer_id as bigint) as transfer_id,
    cast(from_entity_id as bigint) as from_entity_id,
    from_entity_type,
    cast(to_entity_id as bigint) as to_entity_id,
    to_entity_type,
    abs(cast(points_transferred as double)) as points_transferred,
    cast(transferred_at as timestamptz) as transferred_at,
    cast(
        timezone('{{ var("reporting_timezone") }}', cast(transferred_at as timestamptz)) as date
    ) as transferred_on,
    points_transfer_date as transfer_date_as_sent,
    nullif(notes, '') as notes,
    program_name,
    cast(from_user_id as bigint) as from_user_id,
    cast(to_user_id as bigint) as to_user_id
from capillary_points_transfers

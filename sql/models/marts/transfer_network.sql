-- Capillary transfers aggregated per directed pair sender -> receiver.
with edges as (
    select
        from_entity_id,
        any_value(from_entity_type) as from_entity_type,
        to_entity_id,
        any_value(to_entity_type) as to_entity_type,
        count(*) as transfers,
        sum(points_transferred) as points_transferred,
        min(transferred_at) as first_transfer_at,
        max(transferred_at) as last_transfer_at,
        string_agg(distinct program_name, ', ' order by program_name) as program_names
    from {{ ref('stg_capillary__points_transfers') }}
    group by from_entity_id, to_entity_id
)

select
    cast(e.from_entity_id as varchar) || '->' || cast(e.to_entity_id as varchar) as edge_key,
    cast(e.from_entity_id as varchar) as sender_id,
    'capillary:' || cast(e.from_entity_id as varchar) as sender_customer_key,
    e.from_entity_type as sender_type,
    s.full_name as sender_name,
    cast(e.to_entity_id as varchar) as receiver_id,
    'capillary:' || cast(e.to_entity_id as varchar) as receiver_customer_key,
    e.to_entity_type as receiver_type,
    r.full_name as receiver_name,
    e.transfers,
    e.points_transferred,
    e.first_transfer_at,
    e.last_transfer_at,
    e.program_names
from edges as e
left join {{ ref('stg_capillary__transfer_parties') }} as s on s.user_id = e.from_entity_id
left join {{ ref('stg_capillary__transfer_parties') }} as r on r.user_id = e.to_entity_id

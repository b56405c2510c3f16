-- Capillary transfers aggregated per directed pair sender -> receiver.
with stg_capillary__points_transfers as (
    select * from {{ ref('stg_capillary__points_transfers') }}
),

stg_capillary__transfer_parties as (
    select * from {{ ref('stg_capillary__transfer_parties') }}
),

edges as (
    select
        from_entity_id,
        to_entity_id,
        any_value(from_entity_type) as from_entity_type,
        any_value(to_entity_type) as to_entity_type,
        count(*) as transfers,
        sum(points_transferred) as points_transferred,
        min(transferred_at) as first_transfer_at,
        max(transferred_at) as last_transfer_at,
        string_agg(distinct program_name, ', ' order by program_name) as program_names
    from stg_capillary__points_transfers
    group by from_entity_id, to_entity_id
)

select
    cast(edges.from_entity_id as varchar) || '->' || cast(edges.to_entity_id as varchar) as edge_key,
    cast(edges.from_entity_id as varchar) as sender_id,
    'capillary:' || cast(edges.from_entity_id as varchar) as sender_customer_key,
    edges.from_entity_type as sender_type,
    senders.full_name as sender_name,
    cast(edges.to_entity_id as varchar) as receiver_id,
    'capillary:' || cast(edges.to_entity_id as varchar) as receiver_customer_key,
    edges.to_entity_type as receiver_type,
    receivers.full_name as receiver_name,
    edges.transfers,
    edges.points_transferred,
    edges.first_transfer_at,
    edges.last_transfer_at,
    edges.program_names
from edges
-- the parties play two roles here, so the two joins take the role's name rather than the model's
left join stg_capillary__transfer_parties as senders
    on edges.from_entity_id = senders.user_id
left join stg_capillary__transfer_parties as receivers
    on edges.to_entity_id = receivers.user_id

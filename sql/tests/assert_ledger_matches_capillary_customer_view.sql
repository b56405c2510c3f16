-- Every (queried customer, transfer) the API returned has its ledger row on the matching side with the same
-- signed points: ADDITION = transfer_in (+), DEDUCTION = transfer_out (-).
select
    ct.customer_id,
    ct.transfer_id,
    ct.transfer_type,
    ct.points_signed,
    l.points as ledger_points
from {{ source('capillary', 'customer_transfers') }} as ct
left join {{ ref('fct_points_ledger') }} as l
    on
        l.source_system = 'capillary'
        and ct.transfer_id = l.transfer_id
        and l.movement_type = case upper(ct.transfer_type) when 'ADDITION' then 'transfer_in' else 'transfer_out' end
where
    l.ledger_key is null
    or abs(l.points - ct.points_signed) > 1e-6

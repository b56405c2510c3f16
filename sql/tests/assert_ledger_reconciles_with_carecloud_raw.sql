-- Reconciliation: per CareCloud customer, the ledger holds exactly the raw table's records: same count, same
-- total of |points| and same signed total (signed here straight from the raw table and the seed, not through
-- staging). Fails when a raw row is dropped, doubled, or the ledger keeps a row the raw table no longer has.
with raw as (
    select
        r.customer_id,
        count(*) as records,
        sum(abs(r.point_amount)) as abs_points,
        sum(case coalesce(s.movement_type, 'other')
            when 'earn' then abs(r.point_amount)
            when 'redeem' then -abs(r.point_amount)
            when 'expire' then -abs(r.point_amount)
            else r.point_amount
        end) as signed_points
    from {{ source('carecloud', 'point_history') }} as r
    left join {{ ref('carecloud_operation_types') }} as s
        on lower(trim(s.operation_type)) = lower(trim(r.point_operation_type))
    where r.recorded_at is not null  -- records without a usable time are not on the ledger (bad_record_time)
    group by r.customer_id
),

ledger as (
    select
        customer_id,
        count(*) as records,
        sum(abs(points)) as abs_points,
        sum(points) as signed_points
    from {{ ref('fct_points_ledger') }}
    where source_system = 'carecloud'
    group by customer_id
)

select
    coalesce(raw.customer_id, ledger.customer_id) as customer_id,
    raw.records as raw_records,
    ledger.records as ledger_records,
    raw.abs_points as raw_abs_points,
    ledger.abs_points as ledger_abs_points,
    raw.signed_points as raw_signed_points,
    ledger.signed_points as ledger_signed_points
from raw
full outer join ledger on raw.customer_id = ledger.customer_id
where
    raw.records is distinct from ledger.records
    or abs(coalesce(raw.abs_points, 0) - coalesce(ledger.abs_points, 0)) > 1e-6
    or abs(coalesce(raw.signed_points, 0) - coalesce(ledger.signed_points, 0)) > 1e-6

-- One row per CareCloud point-history record, typed, with the movement type from the editable seed and the
-- points signed the same way whatever sign convention the tenant uses.
{% set raw_relation = source('loyalty_raw', 'carecloud_point_history') %}

with raw as (
    select
        record_key,
        customer_id,
        cast(point_amount as double) as point_amount,
        point_operation_type as operation_type,
        point_operation_note as operation_note,
        point_type_id,
        partner_id,
        store_id,
        cast(point_history_record_time as timestamp) as recorded_local,
        cast(recorded_at as timestamptz) as recorded_at,
        {{ optional_column(raw_relation, 'extended_data__date_of_points_expiration', 'date') }} as expires_on,
        {{ optional_column(raw_relation, 'extended_data__purchase_value', 'double') }} as purchase_value,
        {{ optional_column(raw_relation, 'extended_data__external_purchase_id', 'varchar') }} as external_purchase_id,
        extended_data_raw,
        {{ optional_column(raw_relation, '_loaded_run_id', 'varchar') }} as loaded_run_id
    -- No dedupe here: the loader merges the raw table on record_key, so it already holds one row per record. A
    -- window dedupe would cost a sort of the whole history on every build (the ledger reads this view in full);
    -- damage is caught instead by the unique test below and the reconciliation tests against the raw table.
    from {{ raw_relation }}
),

operation_types as (
    select lower(trim(operation_type)) as operation_type_match, movement_type
    from {{ ref('carecloud_operation_types') }}
)

select
    raw.record_key,
    raw.customer_id,
    raw.point_amount,
    coalesce(ot.movement_type, 'other') as movement_type,
    case coalesce(ot.movement_type, 'other')
        when 'earn' then abs(raw.point_amount)
        when 'redeem' then -abs(raw.point_amount)
        when 'expire' then -abs(raw.point_amount)
        else raw.point_amount
    end as points_signed,
    raw.operation_type,
    raw.operation_note,
    raw.point_type_id,
    raw.partner_id,
    raw.store_id,
    raw.recorded_local,
    raw.recorded_at,
    cast(raw.recorded_local as date) as recorded_on,
    raw.expires_on,
    raw.purchase_value,
    raw.external_purchase_id,
    raw.extended_data_raw,
    raw.loaded_run_id
from raw
left join operation_types as ot
    on lower(trim(raw.operation_type)) = ot.operation_type_match

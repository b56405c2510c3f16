-- One row per CareCloud point-history record, typed and renamed. The movement type and the signed points come
-- from the analyst-editable seed, a join: int_carecloud__point_history_signed adds them.
{% set raw_relation = source('carecloud', 'point_history') %}

with carecloud_point_history as (
    select * from {{ raw_relation }}
)

-- No dedupe here: the loader merges the raw table on record_key, so it already holds one row per record. A
-- window dedupe would cost a sort of the whole history on every build (the ledger reads this view in full);
-- damage is caught instead by the unique test and the reconciliation tests against the raw table.
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
    cast(cast(point_history_record_time as timestamp) as date) as recorded_on,
    {{ optional_column(raw_relation, 'extended_data__date_of_points_expiration', 'date') }} as expires_on,
    {{ optional_column(raw_relation, 'extended_data__purchase_value', 'double') }} as purchase_value,
    {{ optional_column(raw_relation, 'extended_data__external_purchase_id', 'varchar') }} as external_purchase_id,
    extended_data_raw,
    {{ optional_column(raw_relation, '_loaded_run_id', 'varchar') }} as loaded_run_id
from carecloud_point_history

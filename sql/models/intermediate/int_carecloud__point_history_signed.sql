-- CareCloud records with their movement type from the editable seed (matched ignoring case and surrounding
-- spaces; unmapped names become `other`) and points signed the same way whatever sign convention the tenant
-- uses: earn adds |amount|, redeem and expire take |amount| away, adjust and other keep the sign as sent.
with stg_carecloud__point_history as (
    select * from {{ ref('stg_carecloud__point_history') }}
),

carecloud_operation_types as (
    select
        lower(trim(operation_type)) as operation_type_match,
        movement_type
    from {{ ref('carecloud_operation_types') }}
),

classified as (
    select
        stg_carecloud__point_history.*,
        coalesce(carecloud_operation_types.movement_type, 'other') as movement_type
    from stg_carecloud__point_history
    left join carecloud_operation_types
        on
            lower(trim(stg_carecloud__point_history.operation_type))
            = carecloud_operation_types.operation_type_match
)

select
    *,
    case movement_type
        when 'earn' then abs(point_amount)
        when 'redeem' then -abs(point_amount)
        when 'expire' then -abs(point_amount)
        else point_amount
    end as points_signed
from classified

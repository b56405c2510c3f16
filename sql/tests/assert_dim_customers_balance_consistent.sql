-- A customer's current balance equals the sum of its lifetime components and its last daily running balance.
with last_day as (
    select
        customer_key,
        running_balance
    from {{ ref('agg_customer_points_daily') }}
    qualify row_number() over (partition by customer_key order by activity_on desc) = 1
)

select
    c.customer_key,
    c.current_balance,
    last_day.running_balance
from {{ ref('dim_customers') }} as c
left join last_day on c.customer_key = last_day.customer_key
where
    last_day.customer_key is null
    or abs(c.current_balance - last_day.running_balance) > 1e-6
    or abs(c.current_balance - (
        c.lifetime_earned - c.lifetime_redeemed - c.lifetime_expired
        + c.lifetime_transferred_in - c.lifetime_transferred_out + c.lifetime_adjusted + c.lifetime_other
    )) > 1e-6

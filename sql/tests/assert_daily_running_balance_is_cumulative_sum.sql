-- Running balances equal the cumulative sum of ledger movements, and the daily table covers exactly the
-- (customer, day) pairs of the ledger with the same daily net.
with ledger_days as (
    select
        customer_key,
        occurred_on as activity_on,
        sum(points) as net_points,
        count(*) as movements
    from {{ ref('fct_points_ledger') }}
    group by customer_key, occurred_on
),

expected as (
    select
        *,
        sum(net_points) over (
            partition by customer_key order by activity_on rows between unbounded preceding and current row
        ) as running_balance
    from ledger_days
)

select
    coalesce(e.customer_key, d.customer_key) as customer_key,
    coalesce(e.activity_on, d.activity_on) as activity_on,
    e.net_points as expected_net,
    d.net_points as daily_net,
    e.running_balance as expected_balance,
    d.running_balance as daily_balance
from expected as e
full outer join {{ ref('agg_customer_points_daily') }} as d
    on e.customer_key = d.customer_key and e.activity_on = d.activity_on
where
    e.customer_key is null
    or d.customer_key is null
    or e.movements is distinct from d.movements
    or abs(e.net_points - d.net_points) > 1e-6
    or abs(e.running_balance - d.running_balance) > 1e-6

-- Upcoming expirations: CareCloud earn records whose extended_data carries date_of_points_expiration on or after
-- the as-of date, per customer and expiration date. Gross: CareCloud does not say which earned points a later
-- redemption consumed, so `expiring_points` can exceed what the customer still holds; `expiring_points_capped`
-- caps the running total at the current balance.
{% set as_of = var('as_of_date') %}
with fct_points_ledger as (
    select * from {{ ref('fct_points_ledger') }}
),

dim_customers as (
    select * from {{ ref('dim_customers') }}
),

as_of as (
    select
        {% if as_of %}
            cast('{{ as_of }}' as date)
        {% else %}
            cast(timezone('{{ var("reporting_timezone") }}', now()) as date)
        {% endif %} as as_of_date
),

upcoming as (
    select
        fct_points_ledger.customer_key,
        fct_points_ledger.source_system,
        fct_points_ledger.customer_id,
        fct_points_ledger.expires_on,
        count(*) as earn_movements,
        sum(fct_points_ledger.points) as expiring_points
    from fct_points_ledger
    cross join as_of
    where
        fct_points_ledger.movement_type = 'earn'
        and fct_points_ledger.expires_on is not null
        and fct_points_ledger.expires_on >= as_of.as_of_date
    group by
        fct_points_ledger.customer_key,
        fct_points_ledger.source_system,
        fct_points_ledger.customer_id,
        fct_points_ledger.expires_on
),

ranked as (
    select
        *,
        sum(expiring_points) over (
            partition by customer_key order by expires_on rows between unbounded preceding and current row
        ) as cumulative_expiring
    from upcoming
)

-- The capped amount is this date's share of the balance once the earlier dates have taken theirs: the balance
-- (never below 0) covers the cumulative total up to this date minus what it covered up to the date before.
select
    ranked.customer_key || ':' || strftime(ranked.expires_on, '%Y-%m-%d') as expiring_key,
    ranked.customer_key,
    ranked.source_system,
    ranked.customer_id,
    ranked.expires_on,
    datediff('day', as_of.as_of_date, ranked.expires_on) as days_until_expiration,
    ranked.earn_movements,
    ranked.expiring_points,
    greatest(
        least(ranked.cumulative_expiring, greatest(dim_customers.current_balance, 0))
        - least(
            ranked.cumulative_expiring - ranked.expiring_points, greatest(dim_customers.current_balance, 0)
        ),
        0
    ) as expiring_points_capped,
    dim_customers.current_balance,
    as_of.as_of_date
from ranked
cross join as_of
inner join dim_customers
    on ranked.customer_key = dim_customers.customer_key

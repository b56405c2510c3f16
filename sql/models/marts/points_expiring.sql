-- Upcoming expirations: CareCloud earn records whose extended_data carries date_of_points_expiration on or after
-- the as-of date, per customer and expiration date. Gross: CareCloud does not say which earned points a later
-- redemption consumed, so `expiring_points` can exceed what the customer still holds; `expiring_points_capped`
-- caps the running total at the current balance.
{% set as_of = var('as_of_date') %}
with as_of as (
    select
        {% if as_of %}
        cast('{{ as_of }}' as date)
        {% else %}
        cast(timezone('{{ var("reporting_timezone") }}', now()) as date)
        {% endif %} as as_of_date
),

upcoming as (
    select
        l.customer_key,
        l.source_system,
        l.customer_id,
        l.expires_on,
        count(*) as earn_movements,
        sum(l.points) as expiring_points
    from {{ ref('fct_points_ledger') }} as l
    cross join as_of
    where l.movement_type = 'earn'
      and l.expires_on is not null
      and l.expires_on >= as_of.as_of_date
    group by l.customer_key, l.source_system, l.customer_id, l.expires_on
),

ranked as (
    select
        u.*,
        sum(u.expiring_points) over (
            partition by u.customer_key order by u.expires_on rows between unbounded preceding and current row
        ) as cumulative_expiring
    from upcoming as u
)

select
    r.customer_key || ':' || strftime(r.expires_on, '%Y-%m-%d') as expiring_key,
    r.customer_key,
    r.source_system,
    r.customer_id,
    r.expires_on,
    datediff('day', as_of.as_of_date, r.expires_on) as days_until_expiration,
    r.earn_movements,
    r.expiring_points,
    greatest(
        least(r.cumulative_expiring, greatest(c.current_balance, 0))
        - least(r.cumulative_expiring - r.expiring_points, greatest(c.current_balance, 0)),
        0
    ) as expiring_points_capped,
    c.current_balance,
    as_of.as_of_date
from ranked as r
cross join as_of
join {{ ref('dim_customers') }} as c on c.customer_key = r.customer_key

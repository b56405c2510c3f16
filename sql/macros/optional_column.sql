{#- extended_data keys become `extended_data__<key>` columns only once some record carried the key, so a
    warehouse may lack any of them. Select the column cast to `data_type` when the relation has it, else a typed
    null, so staging builds on every warehouse. -#}
{% macro optional_column(relation, column_name, data_type) -%}
    {%- set present = [] -%}
    {%- if execute -%}
        {%- for col in adapter.get_columns_in_relation(relation) -%}
            {%- if col.name | lower == column_name | lower -%}{%- do present.append(col.name) -%}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if present -%}
        try_cast({{ adapter.quote(present[0]) }} as {{ data_type }})
    {%- else -%}
        cast(null as {{ data_type }})
    {%- endif -%}
{%- endmacro %}

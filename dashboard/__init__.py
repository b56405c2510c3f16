"""The loyalty points dashboard (Streamlit) on the marts of the `loyalty` schema. Start it with `loyalty-etl dashboard`."""

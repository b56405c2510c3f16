"""loyalty-warehouse: nightly ELT of CareCloud point history and Capillary points transfers into DuckDB."""

__version__ = "0.1.0"

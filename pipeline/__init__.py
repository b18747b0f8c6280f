"""totesys-etl: incremental extract, Polars transform and atomic load of the totesys database."""

__version__ = "0.1.0"

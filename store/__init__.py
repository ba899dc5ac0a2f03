"""The results store: Parquet part files under one folder, read through DuckDB.

``store.schema`` is the single definition of tables and columns; ``store.writer`` commits part files
atomically (used by the batch job); ``store.query`` opens a read-only DuckDB view of a store (used by the
report and the dashboard).
"""

from store.schema import SCHEMA_VERSION, TABLES

__all__ = ["SCHEMA_VERSION", "TABLES"]

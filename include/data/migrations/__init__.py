"""Versioned schema migrations of the market store (Alembic scripts owned by this project).

:func:`include.data.store.migrate` applies them; each file in ``versions/`` is one numbered step.
The version is kept in the table ``market_schema_version`` so that the market store can share a
database with other Alembic-managed schemas (Airflow's own metadata uses ``alembic_version``).
"""

"""Storage adapters: SQLAlchemy (SQLite / PostgreSQL) and live state (in-process / Redis).

The only modules of the product that know SQL or Redis.
"""

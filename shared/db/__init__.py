"""The store: SQLAlchemy models, sessions, migrations and the chain/pair writes."""

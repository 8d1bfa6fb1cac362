"""Controller state: SQLAlchemy 2.0 models, the engine and session, migrations.

ORM objects stay in this layer and the services; servicers get plain data.
"""

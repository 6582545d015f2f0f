"""The fire brigade's web console: `create_app(store, live, settings)` (central/console/app.py)."""

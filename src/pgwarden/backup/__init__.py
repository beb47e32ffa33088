"""Base backups: create, catalog, verify, restore, retention."""

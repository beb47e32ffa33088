"""Restore drills: restore a backup, recover, check the data, measure RTO and RPO."""

"""WAL archiving: segment and timeline naming, archive continuity."""

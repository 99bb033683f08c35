"""Runtime data behind one narrow interface: nothing outside this package
writes SQL, so a PostgreSQL backend can be added without touching callers."""

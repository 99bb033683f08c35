"""Runtime data behind one narrow interface (DESIGN §4): nothing outside this package
writes SQL, so a PostgreSQL backend can be added without touching callers."""

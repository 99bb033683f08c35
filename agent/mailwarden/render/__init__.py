"""State -> service configuration files, and the transaction that puts them live."""

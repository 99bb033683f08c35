"""The REST API (Falcon): the only way to change anything; the web UI and CLI are clients."""

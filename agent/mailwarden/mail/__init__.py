"""The mail path: content filter, policy service, scanners, authentication, rule engine."""

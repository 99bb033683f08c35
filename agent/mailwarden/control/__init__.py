"""Putting a state live: the apply transaction, the services' own checks, health probes and
service control (systemd on the appliance)."""

"""Mailwarden: the agent of an email security gateway appliance."""

__version__ = "0.1.0"

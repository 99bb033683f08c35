"""Mailwarden's development harness: private instances of every daemon for the tests, the
benchmarks and `mailwarden-dev`. A separate distribution (mailwarden-dev) that the appliance
image never installs; it uses the product, never the other way round."""

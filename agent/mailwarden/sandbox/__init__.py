"""Private instances of every daemon, for tests and `mailwarden dev`."""

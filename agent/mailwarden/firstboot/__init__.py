"""First boot: from a fresh appliance to a configured gateway.

`answers` is the one format every front end produces (seed file, console wizard, web
wizard); `engine` turns answers into a state revision, the first admin and the host's own
settings; `setupcode` guards the web wizard until an admin exists.
"""

"""The privileged apply helper: the one way an unprivileged API changes a live appliance.

The API runs as its own unprivileged user, but applying a state writes /etc/postfix and
friends and reloads daemons, which needs root. A small root service (socket-activated by
systemd on /run/mailwarden/apply.sock) runs the very same transaction (control.apply, and the
first-run answers) and sends back the result or the error.

wire: the messages and their framing; client: the API's side; server: the root side's socket
loop and request checks; permissions: the host ownership and modes root sets after a change.
Which transactions the server runs is composed by the command line (`mailwarden
apply-helper`), the one place that knows both the first-run code and this package.
"""

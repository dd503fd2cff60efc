"""One worker: the connection to its process, and the supervisor that restarts it."""

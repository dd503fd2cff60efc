"""The pool: dispatcher and wait queue, worker slots, stats."""

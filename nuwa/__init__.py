"""Nuwa: the Raft-replicated coordination service (tree namespace, sessions, watches, locks, election)."""

"""Processes tier: several real processes share one store; read-only ones follow the writing one live.

Every test runs its writers and readers as separate interpreters (tests/processes/worker.py) and talks
to them through lines on their stdin and stdout.
"""

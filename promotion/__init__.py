"""Promotion through git: the pin, the gate policy, proposing and rolling back.

Bottom of the dependency graph: imports neither ``ml`` nor ``bentos``.
"""

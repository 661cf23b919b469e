"""Promotion through git: the gate policy, proposing a pin change (git + forge API).

Imports the contract, never ``ml``, ``bentos`` or the ``primer`` shell.
"""

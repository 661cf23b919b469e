"""The `primer` application shell: the CLI root and the commands that drive the loop.

Nothing imports this package; it imports the pipeline, the gate and the contract.
"""

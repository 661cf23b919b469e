"""The ML pipeline: data, validation, features, training, evaluation, registry, CLI.

Every module is importable without side effects; work happens in functions.
"""

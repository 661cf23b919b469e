"""The ML pipeline, one module per stage: data, validate, features, train, evaluate, tracking, plots.

Every module is importable without side effects; work happens in functions.
"""

"""The shared contract: names, the pin format, the evaluation record, settings, errors.

Pandas-free and importable by every layer; imports nothing else of the project.
"""

"""Unit tier: one part of the engine or one behaviour at a time.

Recovery cases, removal, forks, live readers, disk use, bad input, the index structures.
"""

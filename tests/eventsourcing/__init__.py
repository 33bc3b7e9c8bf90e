"""The eventsourcing tier: logstore.eventsourcing judged by the eventsourcing library's own test cases.

Needs the library (the ``dev`` extra installs ``eventsourcing[crypto]``).
"""

"""Fault tier: what failures leave behind.

Crashes at every file operation, I/O errors, full disks, bit flips, fuzzed input, SIGKILL, hostile environments.
"""

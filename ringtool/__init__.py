"""``tallyd-ring``, the operators' tool for the Carbon ring (docs/ring.md): `ringtool.cli` is
the command line, `ringtool.ringspec` the ring settings it reads; placement is common/ring.py's.
"""

"""``tallyd-ring``, the operators' tool for the Carbon ring (docs/ring.md, docs/rebalance.md).

`ringtool.cli` is the command line (``lookup``; ``agent`` from `ringtool.agentcli`; ``plan``,
``rebalance`` and ``check`` from `ringtool.movecli`); `ringtool.ringspec` and
`ringtool.ringfile` the ring settings and ring files it reads; placement is common/ring.py's.
The agent (`ringtool.agent`, `ringtool.agentfiles`, `ringtool.datadir`) serves a Carbon host's
Whisper files; `ringtool.client` talks to it; `ringtool.plan`, `ringtool.rebalance` and
`ringtool.check` plan and execute moves; `ringtool.whisperfile`, `ringtool.merge` and
`ringtool.mergefile` merge one file's history into another.
"""

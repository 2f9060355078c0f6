"""Fuzzing a stack with malformed frames: what to send (frames), and how to judge and replay it (the rest)."""

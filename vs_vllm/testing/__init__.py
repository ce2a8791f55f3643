"""Offline test fixtures: deterministic tiny random-weight checkpoints built without any model hub."""

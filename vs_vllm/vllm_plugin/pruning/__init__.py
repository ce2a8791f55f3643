"""Generic pruning machinery shared by every architecture adapter (see architecture notes in the README)."""

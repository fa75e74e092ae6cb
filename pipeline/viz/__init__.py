"""Pictures of runs and stores (matplotlib, the optional [plots] extra)."""

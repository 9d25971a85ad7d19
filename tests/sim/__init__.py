"""The simulator's own tests: SMSC, handsets, faults, load and bench."""

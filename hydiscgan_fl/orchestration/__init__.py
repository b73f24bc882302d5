"""Orchestration that drives Flower: the `hydiscgan` command and the runners behind it.

This is the only part of `hydiscgan_fl` that talks to Flower (through its command line).
"""

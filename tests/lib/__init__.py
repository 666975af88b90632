"""Helpers the tests share (the virtual rack's QEMU machines, the test tiers)."""

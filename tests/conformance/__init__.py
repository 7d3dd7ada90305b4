"""Differential conformance tests: every request goes to a real etcd and to the shim (see tests/harness/differential.py)."""

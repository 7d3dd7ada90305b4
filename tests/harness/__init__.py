"""Shared test machinery: starting real peers and the shim as processes, and comparing them."""

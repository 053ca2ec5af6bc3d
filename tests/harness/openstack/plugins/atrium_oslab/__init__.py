"""Test-only OpenStack plugins for Atrium's local harness (never used in production)."""

"""Real Helm for the tests: see :mod:`tests.harness.helm.sdk`."""

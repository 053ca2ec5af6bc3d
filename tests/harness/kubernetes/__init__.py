"""Kubernetes test harness: a loopback control plane (cluster.py) and a kubelet test double."""

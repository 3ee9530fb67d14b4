"""Emulated heterogeneous testbed: network namespaces, tc shaping and cgroup limits."""

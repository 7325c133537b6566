import os

# Tests talk only to this machine: Ray picks the loopback address for every node it starts
# (this switch makes get_node_ip_address() return 127.0.0.1 instead of the outward interface).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)

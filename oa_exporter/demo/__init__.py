"""`oa-exporter demo`: the daemon against an embedded Prometheus-API source of generated series."""

"""OpenAnomaly: forecasting and anomaly detection for anyone who runs Prometheus."""

__version__ = "0.1.0"

"""The per-pod sensor: its own process. Never imports kopf or the Kubernetes client."""

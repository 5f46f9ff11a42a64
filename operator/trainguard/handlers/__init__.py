"""kopf wiring only: handlers translate events into calls on k8s/, builders/ and detection/."""

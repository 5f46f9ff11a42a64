"""Pure builders: an AgentTrainingJob spec in, Kubernetes manifests (plain dicts) out. No I/O."""

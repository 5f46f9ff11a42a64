"""The detection engine: samples and a policy in, violations and decisions out. Pure, no Kubernetes."""

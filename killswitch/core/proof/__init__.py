"""What is signed and what proves it: SSH keys and signatures, the two-operator arm, forget and
rollout requests, and the audit hash chain with its local copy."""

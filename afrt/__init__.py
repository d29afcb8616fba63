"""The af runtime: loads bundles into sandboxed agents that join a swarm and run their workflows."""

__all__: list[str] = []

"""Federated learning across a swarm (docs/federated.md): strategies, local training and the round
protocol on Redis. Imported on first use (numpy, redis); `afrt.__all__` re-exports what `af` needs.
"""

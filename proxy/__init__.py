"""tallyd's stateless sharding proxy (``tallyd-proxy``): see docs/proxy.md."""

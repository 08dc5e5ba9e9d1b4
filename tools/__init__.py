"""Tool contracts, the registry, the policy gate every call passes, and the AP tools."""

"""Graph assembly: `build_graph` and the module-level `graph` that langgraph.json serves."""

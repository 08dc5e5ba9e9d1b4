"""The serving layer: what `langgraph.json` wires into the LangGraph server besides the graph."""

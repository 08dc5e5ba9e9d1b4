"""Bounded load test of the LangGraph server; the `langgraph dev` launcher tests share."""

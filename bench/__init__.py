"""Benchmarks: the agent's own overhead against bare LangGraph and the database's limit.

`python -m bench` (what `make bench` runs) builds a private database, runs the invoice and
approval flows, a bare LangGraph graph of the same shape on the same checkpointer, and plain
psycopg commits of the same bytes, side by side in one process; then prints a table and
writes ``reports/bench/bench.json``. Everything runs offline (rules model, and an instant
scripted planner for long plans).
"""

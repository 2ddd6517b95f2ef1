"""Accounting: an aggregator that averages Prometheus series over fixed intervals into PostgreSQL,
SQL views answering the platform's three questions, and the ``aiinfn report`` command."""

"""Repositories: SQL for one resource each, as functions of a transaction. Anything tenant-owned
takes the workspace as an argument (decision 7)."""

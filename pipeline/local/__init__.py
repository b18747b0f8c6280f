"""Local adapters and tools: the CLI, the in-process runner, `status`, the demo, throwaway
PostgreSQL servers and the totesys simulator.

None of this runs in AWS: the Lambda image does not contain this package, and its
dependencies (the `local` extra) are not in the Lambda locks.
"""

"""Business operations the CLI, the API, tests and benches call: they may use contracts, infra,
activities' stores and workflow handles, and are imported by starters/, api/ and workers/ only."""

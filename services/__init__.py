"""keel's operations (batches, budgets, cost): what the CLI, the API, tests and benches call."""

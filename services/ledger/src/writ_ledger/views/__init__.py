"""The ledger's views: the log projected into SQLite tables, queried over HTTP and NATS."""

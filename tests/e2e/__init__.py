"""End-to-end tests: the daemon, clusters, Kannel, PostgreSQL and the deploy files."""

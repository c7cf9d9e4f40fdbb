"""Tools run against a daemon from outside: the benchmark and the soak run."""

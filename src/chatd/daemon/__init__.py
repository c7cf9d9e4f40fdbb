"""The running daemon: listeners and admission (server), one session per
connection (a pump) with its outbox, flood control, metrics, and the one
place that wires store and bus (build)."""

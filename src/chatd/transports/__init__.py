"""What carries a session's bytes: TCP, TLS and WebSocket connections side by
side behind the one Connection interface (base)."""

"""Shared fixtures: a real daemon on a free loopback port, and clients for it.

Every async test runs twice, under the asyncio loop and under uvloop.
Tests wait for the line they expect, with a deadline; never for time to pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from chatd.config import Settings
from chatd.server import Server
from tests.helpers import LineClient, PipeClient


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


#: Test defaults: flood control and the connection rate off unless a test
#: turns them on.
TEST_SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    msg_rate=0,
    conn_rate=0,
    shutdown_grace=2.0,
    password_cost="test",
    login_fail_delay=0.05,
)

StartServer = Callable[..., Awaitable[Server]]
Connect = Callable[..., Awaitable[LineClient]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start an in-process daemon on a free port; ``start_server(max_line=100)``."""
    servers: list[Server] = []

    async def start(**overrides: Any) -> Server:
        server = Server(dataclasses.replace(TEST_SETTINGS, **overrides))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[Connect]:
    """Open clients to ``server``: ``await connect("alice")`` is registered in JSON mode."""
    clients: list[LineClient] = []

    async def open_client(nick: str | None = None, *, json_mode: bool = True) -> LineClient:
        client = await LineClient.open("127.0.0.1", server.port)
        clients.append(client)
        if json_mode:
            await client.use_json()
        if nick is not None:
            await client.register(nick, json_mode=json_mode)
        return client

    yield open_client
    for client in clients:
        client.close()


Spawn = Callable[..., Awaitable[PipeClient]]


@pytest.fixture
async def spawn(start_server: StartServer) -> AsyncIterator[Spawn]:
    """Start pipe clients; they are killed before the servers stop."""
    clients: list[PipeClient] = []

    async def start(port: int, *args: str) -> PipeClient:
        client = await PipeClient.start(port, *args)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()

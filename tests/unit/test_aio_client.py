"""AsyncClient: the asyncio form of the control-plane Client (requests, subscriptions, errors, close), on the
stdlib loop and on uvloop."""

from __future__ import annotations

import asyncio
import os
import tempfile

import pytest

from edgepipe.control import messages as pb
from edgepipe.control.client import AsyncClient
from edgepipe.control.framing import Envelope
from edgepipe.control.server import Server
from edgepipe.errors import FrameTimeoutError, PeerClosedError, RemoteError

pytestmark = pytest.mark.asyncio
HANG_S = 30


@pytest.fixture
def server():
    d = tempfile.mkdtemp(prefix="ep-aio-")
    os.chmod(d, 0o700)
    srv = Server(os.path.join(d, "ctl.sock"))
    srv.on("stats", lambda session, env: Envelope(stop=pb.Stop(reason=f"got {env.stats.stage_name}")))
    srv.start()
    yield srv
    srv.close()
    os.rmdir(d)


class TestRequest:
    async def test_request_gets_its_reply(self, server):
        """await request() returns the reply to that request, concurrent requests each get their own."""
        async with await AsyncClient.connect(server.path, stage="a", role="stage") as c:
            replies = await asyncio.gather(*(c.request(Envelope(stats=pb.Stats(stage_name=f"s{i}")))
                                             for i in range(20)))
            assert [r.stop.reason for r in replies] == [f"got s{i}" for i in range(20)]

    async def test_unhandled_request_is_a_remote_error(self, server):
        """A request the server has no handler for raises RemoteError; the client keeps working."""
        async with await AsyncClient.connect(server.path, stage="a", role="stage") as c:
            with pytest.raises(RemoteError):
                await c.request(Envelope(stop=pb.Stop(reason="x")), timeout_s=HANG_S)
            assert (await c.request(Envelope(stats=pb.Stats(stage_name="b")))).stop.reason == "got b"

    async def test_no_reply_times_out(self, server):
        """A handler that answers nothing: FrameTimeoutError after timeout_s."""
        server.on("frame_meta", lambda session, env: None)
        async with await AsyncClient.connect(server.path, stage="a", role="stage") as c:
            with pytest.raises(FrameTimeoutError, match="timeout_s=0.05"):
                await c.request(Envelope(frame_meta=pb.FrameMeta()), timeout_s=0.05)


class TestSubscribe:
    async def test_published_stats_reach_the_subscription_in_order(self, server):
        """Stats the server publishes reach `async for env in client.subscribe("stats")` in order."""
        async with await AsyncClient.connect(server.path, stage="w", role="monitor", subscribe=["stats"]) as c:
            server.wait_session("w", timeout_s=HANG_S)
            got = []

            async def watch():
                async for env in c.subscribe("stats"):
                    got.append(env.stats.stage_name)
                    if len(got) == 50:
                        return

            task = asyncio.ensure_future(watch())
            for i in range(50):
                server.publish(Envelope(stats=pb.Stats(stage_name=f"s{i}")))
            await asyncio.wait_for(task, HANG_S)
            assert got == [f"s{i}" for i in range(50)]

    async def test_server_close_ends_the_subscription_and_fails_requests(self, server):
        """When the server closes, `async for` ends and a request raises PeerClosedError."""
        async with await AsyncClient.connect(server.path, stage="w", role="monitor", subscribe=["stats"]) as c:
            server.wait_session("w", timeout_s=HANG_S)

            async def watch():
                return [env async for env in c.subscribe("stats")]

            task = asyncio.ensure_future(watch())
            server.publish(Envelope(stats=pb.Stats(stage_name="last")))
            await asyncio.sleep(0.05)
            await asyncio.get_running_loop().run_in_executor(None, server.close)
            got = await asyncio.wait_for(task, HANG_S)
            assert [e.stats.stage_name for e in got] == ["last"]
            with pytest.raises(PeerClosedError):
                await c.request(Envelope(stats=pb.Stats(stage_name="x")), timeout_s=HANG_S)

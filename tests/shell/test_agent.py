"""ringtool.agent served on real loopback (port 0) over a data dir of real Whisper files, driven
by ringtool.client.AgentClient (and raw requests for what AgentClient would never send).

The Whisper files are written and read back by the ``whisper`` package, the reference
implementation, so the merge is checked against what carbon itself would read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import whisper

from common import stats
from common.httpclient import request
from common.httproutes import Response, route
from common.httpserver import Request, serve_http
from ringtool.agent import Agent, AgentConfig, serve_agent
from ringtool.client import AgentClient, AgentError, FileEntry

TOKEN = "s3cret-token"
STEP = 60
RETENTION = [(STEP, 1440)]  # a day of minutes


def now_slot() -> int:
    return int(time.time()) // STEP * STEP


def make_wsp(path: Path, points: dict[int, float]) -> None:
    """A Whisper file at ``path`` holding ``points`` (slot offset back from now -> value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    whisper.create(str(path), RETENTION)
    base = now_slot()
    whisper.update_many(str(path), [(base - back * STEP, value) for back, value in points.items()])


def read_points(path: Path) -> dict[int, float]:
    """The file's non-empty points, as slot offsets back from now -> value."""
    (start, _end, step), values = whisper.fetch(str(path), int(time.time()) - 3600)
    base = now_slot()
    return {(base - (start + i * step)) // STEP: v for i, v in enumerate(values)
            if v is not None}


def real(path: Path) -> str:
    return os.path.realpath(path)


def tree(root: Path) -> list[str]:
    """Every path under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


Serve = Callable[..., Awaitable[tuple[AgentClient, Agent]]]


@pytest.fixture
def serve(nursery: trio.Nursery) -> Serve:
    """Start an agent on port 0; returns a client for it (with ``client_token``) and the agent."""

    async def start(data_dir: Path, *, token: str | None = None,
                    client_token: str | None = None, **config: object) -> tuple[
                        AgentClient, Agent]:
        agent = Agent(AgentConfig(data_dir=data_dir, host="127.0.0.1", port=0, token=token,
                                  **config))  # type: ignore[arg-type]
        host, port = await nursery.start(serve_agent, agent)
        return AgentClient(f"http://{host}:{port}", token=client_token, timeout=5.0), agent

    return start


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "whisper"
    make_wsp(root / "a" / "b" / "c.wsp", {1: 1.0, 2: 2.0, 3: 3.0})
    make_wsp(root / "a" / "d.wsp", {5: 5.0})
    make_wsp(root / "top.wsp", {1: 0.0})
    return root


async def listing(client: AgentClient) -> list[FileEntry]:
    return [entry async for entry in client.iter_files()]


async def test_version_names_the_agent_and_its_data_dir(serve: Serve, data_dir: Path) -> None:
    client, _ = await serve(data_dir)
    answer = await client.version()
    assert answer["agent"] == "tallyd-ring"
    assert answer["data_dir"] == real(data_dir)
    assert answer["version"]


async def test_listing_is_complete_and_skips_what_is_not_a_series(
        serve: Serve, data_dir: Path, tmp_path: Path) -> None:
    (data_dir / "a" / "b" / ".c.wsp.x1y2.tmp").write_bytes(b"temp")  # a merge's temp file
    (data_dir / "a" / "notes.txt").write_text("not a series")
    (data_dir / ".hidden").mkdir()
    make_wsp(data_dir / ".hidden" / "x.wsp", {1: 1.0})
    outside = tmp_path / "outside"
    make_wsp(outside / "secret.wsp", {1: 42.0})
    (data_dir / "linked_dir").symlink_to(outside)
    (data_dir / "a" / "linked.wsp").symlink_to(outside / "secret.wsp")
    client, _ = await serve(data_dir)
    entries = await listing(client)
    assert sorted(e.name for e in entries) == ["a.b.c", "a.d", "top"]
    size = (data_dir / "a" / "d.wsp").stat().st_size
    assert FileEntry("a.d", size, (data_dir / "a" / "d.wsp").stat().st_mtime) in entries
    # The raw answer is NDJSON ending with the end marker.
    _, headers, body = await request("GET", client.base_url + "/files")
    assert dict(headers)["content-type"] == "application/x-ndjson"
    assert json.loads(body.splitlines()[-1]) == {"end": True, "files": 3}


async def test_listing_of_many_files_streams_in_batches(serve: Serve, tmp_path: Path) -> None:
    root = tmp_path / "many"
    template = tmp_path / "template.wsp"
    make_wsp(template, {1: 1.0})
    for i in range(2500):  # more than two batches; hard links keep it cheap
        target = root / f"d{i % 7}" / f"m{i}.wsp"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(template, target)
    client, _ = await serve(root)
    names = {e.name for e in await listing(client)}
    assert len(names) == 2500 and "d3.m10" in names


async def test_cut_listing_raises_listing_cut(nursery: trio.Nursery) -> None:
    async def cut(request: Request) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            yield b'{"name":"a.b","size":1,"mtime":1.0}\n'
        return Response(200, lines())

    async def lying(request: Request) -> Response:
        return Response(200, b'{"name":"a.b","size":1,"mtime":1.0}\n{"end":true,"files":2}\n')

    host, port = await nursery.start(serve_http, [route("GET", "/files", cut)])
    with pytest.raises(AgentError) as caught:
        await listing(AgentClient(f"http://{host}:{port}"))
    assert caught.value.reason == "listing_cut"
    host, port = await nursery.start(serve_http, [route("GET", "/files", lying)])
    with pytest.raises(AgentError) as caught:
        await listing(AgentClient(f"http://{host}:{port}"))
    assert caught.value.reason == "listing_cut"


async def test_fetch_returns_the_file_and_absent_is_404(serve: Serve, data_dir: Path) -> None:
    client, _ = await serve(data_dir)
    assert await client.fetch("a.b.c") == (data_dir / "a" / "b" / "c.wsp").read_bytes()
    assert await client.exists("a.b.c")
    assert not await client.exists("a.b.nothing")
    with pytest.raises(AgentError) as caught:
        await client.fetch("a.b.nothing")
    assert (caught.value.reason, caught.value.status) == ("not_found", 404)


async def test_merge_creates_a_missing_file(serve: Serve, data_dir: Path) -> None:
    client, agent = await serve(data_dir)
    source = (data_dir / "a" / "b" / "c.wsp").read_bytes()
    answer = await client.merge("new.series.name", source)
    assert answer["created"] is True
    assert answer["verification"]["missing"] == 0
    created = data_dir / "new" / "series" / "name.wsp"
    assert read_points(created) == {1: 1.0, 2: 2.0, 3: 3.0}
    assert agent.statistics().created == 1


async def test_names_with_unicode_spaces_and_colons_round_trip(serve: Serve,
                                                              data_dir: Path) -> None:
    client, _ = await serve(data_dir)
    source = (data_dir / "a" / "d.wsp").read_bytes()
    name = "caf\u00e9.load avg.host:1?x=#y%"
    assert (await client.merge(name, source))["created"] is True
    assert (data_dir / "caf\u00e9" / "load avg" / "host:1?x=#y%.wsp").is_file()
    assert await client.fetch(name) == source
    assert name in {e.name for e in await listing(client)}
    assert await client.delete(name) is True


async def test_merge_fills_holes_and_keeps_local_points(
        serve: Serve, data_dir: Path, tmp_path: Path) -> None:
    local = data_dir / "m" / "x.wsp"
    make_wsp(local, {1: 10.0, 3: 30.0, 5: 0.0})         # holes at 2 and 4
    source = tmp_path / "source.wsp"
    make_wsp(source, {1: 99.0, 2: 2.0, 4: 4.0, 5: 7.0})  # 1 and 5 conflict, 2 and 4 fill
    client, agent = await serve(data_dir)
    answer = await client.merge("m.x", source.read_bytes())
    assert answer["created"] is False
    assert (answer["filled"], answer["conflicts"]) == (2, 2)
    assert answer["verification"] == {"present": 2, "conflicts": 2, "missing": 0, "ok": True}
    assert read_points(local) == {1: 10.0, 2: 2.0, 3: 30.0, 4: 4.0, 5: 0.0}
    again = await client.merge("m.x", source.read_bytes())  # idempotent
    assert again["filled"] == 0
    stats = agent.statistics()
    assert (stats.merges, stats.filled, stats.conflicts) == (2, 2, 4)


async def test_verify_counts_missing_points(serve: Serve, data_dir: Path,
                                            tmp_path: Path) -> None:
    source = tmp_path / "source.wsp"
    make_wsp(source, {1: 1.0, 2: 2.0, 3: 3.0, 7: 7.0})
    client, _ = await serve(data_dir)
    answer = await client.verify("a.b.c", source.read_bytes())
    assert answer == {"present": 3, "conflicts": 0, "missing": 1, "ok": False}
    with pytest.raises(AgentError) as caught:
        await client.verify("no.such", source.read_bytes())
    assert caught.value.status == 404


async def test_corrupt_upload_is_refused_and_nothing_written(serve: Serve,
                                                             data_dir: Path) -> None:
    client, _ = await serve(data_dir)
    with pytest.raises(AgentError) as caught:
        await client.merge("corrupt.one", b"\x00\x00\x00\x01garbage")
    assert (caught.value.reason, caught.value.status) == ("bad_whisper", 400)
    assert not (data_dir / "corrupt" / "one.wsp").exists()


async def test_pull_copies_agent_to_agent(serve: Serve, data_dir: Path,
                                          tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    make_wsp(other_dir / "a" / "b" / "c.wsp", {4: 4.0})
    source, _ = await serve(data_dir, token=TOKEN, client_token=TOKEN)
    target, _ = await serve(other_dir, token=TOKEN, client_token=TOKEN)
    answer = await target.pull("a.b.c", source.base_url)
    assert (answer["created"], answer["filled"]) == (False, 3)
    assert answer["verification"]["ok"] is True
    assert read_points(other_dir / "a" / "b" / "c.wsp") == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
    created = await target.pull("a.d", source.base_url)
    assert created["created"] is True
    with pytest.raises(AgentError) as caught:
        await target.pull("not.there", source.base_url)
    assert caught.value.status == 404
    with pytest.raises(AgentError) as caught:
        await target.pull("a.d", "http://127.0.0.1:1")
    assert (caught.value.reason, caught.value.status) == ("source_failed", 502)


async def test_delete_removes_the_file_once(serve: Serve, data_dir: Path) -> None:
    client, agent = await serve(data_dir)
    assert await client.delete("a.d") is True
    assert not (data_dir / "a" / "d.wsp").exists()
    assert await client.delete("a.d") is False
    assert agent.statistics().deleted == 1


async def test_token_is_required_refused_and_accepted(serve: Serve, data_dir: Path) -> None:
    client, agent = await serve(data_dir, token=TOKEN, client_token=TOKEN)
    anonymous = AgentClient(client.base_url)
    wrong = AgentClient(client.base_url, token="s3cret-tokex")
    assert (await anonymous.version())["agent"] == "tallyd-ring"  # the one public route
    for who in (anonymous, wrong):
        for call in (listing(who), who.fetch("a.d"), who.delete("a.d"),
                     who.merge("a.d", b"x"), who.exists("a.d")):
            with pytest.raises(AgentError) as caught:
                await call
            assert caught.value.status == 401
    status, _, _ = await request("GET", client.base_url + "/files",
                                       headers=[("authorization", f"Basic {TOKEN}")])
    assert status == 401
    assert [e.name for e in await listing(client) if e.name == "a.d"] == ["a.d"]
    assert (data_dir / "a" / "d.wsp").exists()
    assert agent.statistics().refused["unauthorized"] == 11


@pytest.mark.parametrize("raw_name", [
    "..", "%2e%2e", "%2E%2E", "..%2f..%2fetc%2fpasswd", "%2fetc%2fpasswd", "a%00b", "a%5cb",
    "a..b", ".a", "a.", "%ff%fe", "a%2fb",
])
async def test_hostile_names_are_refused(serve: Serve, data_dir: Path, tmp_path: Path,
                                         raw_name: str) -> None:
    client, agent = await serve(data_dir)
    source = (data_dir / "a" / "d.wsp").read_bytes()
    before = tree(tmp_path)
    for method, suffix, body in [("GET", "", b""), ("HEAD", "", b""), ("DELETE", "", b""),
                                 ("POST", "/merge", source), ("POST", "/verify", source)]:
        status, _, answer = await request(method, f"{client.base_url}/files/{raw_name}{suffix}",
                                          body=body)
        assert status == 400, (method, raw_name, answer)
        if method != "HEAD":
            assert json.loads(answer)["error"] == "bad_name"
    assert tree(tmp_path) == before
    assert agent.statistics().refused["bad_name"] == 5


async def test_raw_dot_dot_paths_match_no_route(serve: Serve, data_dir: Path) -> None:
    client, _ = await serve(data_dir)
    for path in ("/files/../../etc/passwd", "/files/a/../../b", "/files//etc/passwd"):
        status, _, _ = await request("GET", client.base_url + path)
        assert status == 404


async def test_symlinks_inside_the_data_dir_are_refused(serve: Serve, data_dir: Path,
                                                        tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_wsp(outside / "secret.wsp", {1: 42.0})
    (data_dir / "evil").symlink_to(outside)                                    # a directory
    (data_dir / "a" / "link.wsp").symlink_to(outside / "secret.wsp")          # a file
    client, _ = await serve(data_dir)
    source = (data_dir / "a" / "d.wsp").read_bytes()
    secret = (outside / "secret.wsp").read_bytes()
    for name in ("evil.secret", "a.link"):
        for call in (client.fetch(name), client.exists(name), client.delete(name),
                     client.merge(name, source), client.verify(name, source)):
            with pytest.raises(AgentError) as caught:
                await call
            assert caught.value.status == 400, name
            assert caught.value.reason in ("symlink", "http_error"), name  # HEAD: no body
    for name in ("evil.created", "evil.sub.dir.created"):  # nothing is created through it
        with pytest.raises(AgentError) as caught:
            await client.merge(name, source)
        assert caught.value.reason == "symlink"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.wsp"]
    assert (outside / "secret.wsp").read_bytes() == secret
    assert (data_dir / "a" / "link.wsp").is_symlink()


async def test_merge_with_a_file_in_the_way_is_409(serve: Serve, data_dir: Path) -> None:
    (data_dir / "a" / "plain").write_text("a file where a directory would go")
    client, _ = await serve(data_dir)
    with pytest.raises(AgentError) as caught:
        await client.merge("a.plain.x", (data_dir / "a" / "d.wsp").read_bytes())
    assert (caught.value.reason, caught.value.status) == ("conflict", 409)


async def test_statistics_are_named_ring_agent(serve: Serve, data_dir: Path) -> None:
    client, agent = await serve(data_dir)
    await client.fetch("a.d")
    with pytest.raises(AgentError):
        await client.fetch("a..d")
    names = {r.name: r.value for r in stats.read("ring", "agent", agent.statistics())}
    assert names["ring.agent.requests.fetch"] == 2
    assert names["ring.agent.refused.bad_name"] == 1
    assert agent.http.statistics().responses == {"200": 1, "400": 1}


async def test_upload_over_the_cap_is_413(serve: Serve, data_dir: Path) -> None:
    client, agent = await serve(data_dir, max_upload_bytes=4096)
    with pytest.raises(AgentError) as caught:
        await client.merge("big.one", b"\x00" * 200_000)
    assert (caught.value.reason, caught.value.status) == ("too_large", 413)
    assert not (data_dir / "big").exists()
    assert agent.statistics().refused["too_large"] == 1
    # The agent goes on serving.
    assert (await client.version())["agent"] == "tallyd-ring"


async def test_pull_body_must_name_a_source(serve: Serve, data_dir: Path) -> None:
    client, _ = await serve(data_dir)
    for body in (b"", b"[]", b'{"src": 1}', b'{"source": "ftp://x"}', b"\xff"):
        status, _, answer = await request("POST", client.base_url + "/files/a.d/pull",
                                          body=body)
        assert status == 400 and json.loads(answer)["error"] == "bad_request", body


def test_agent_config_is_frozen(tmp_path: Path) -> None:
    config = AgentConfig(data_dir=tmp_path)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    assert (config.host, config.port) == ("127.0.0.1", 7070)

"""Control sockets work in state directories whose path exceeds sun_path (107 bytes)."""

from __future__ import annotations

import socket

import pytest

from kestrel._internal.unixsock import MAX_SUN_PATH, bind_unix, connect_unix


@pytest.mark.parametrize("depth", [1, 3])
def test_bind_and_connect_at_any_path_length(tmp_path, depth):
    directory = tmp_path
    for i in range(depth):
        directory = directory / (f"d{i}" + "x" * 50)
    directory.mkdir(parents=True)
    path = directory / "control.sock"
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        bind_unix(server, path)
        server.listen()
        assert path.exists()
        connect_unix(client, path)
        conn, _ = server.accept()
        with conn:
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
    if depth == 3:
        assert len(str(path)) > MAX_SUN_PATH  # the case plain bind() refuses


def test_plain_bind_really_fails_on_long_paths(tmp_path):
    directory = tmp_path / ("x" * 60) / ("y" * 60)
    directory.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(OSError):
        s.bind(str(directory / "control.sock"))


def test_connect_to_missing_socket_raises_file_not_found(tmp_path):
    deep = tmp_path / ("z" * 120)
    deep.mkdir()
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(FileNotFoundError):
        connect_unix(s, deep / "control.sock")
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(FileNotFoundError):
        connect_unix(s, tmp_path / "nodir" / ("q" * 120) / "control.sock")

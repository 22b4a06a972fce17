"""A minimal real SMTP server (RFC 5321 subset) on loopback that stores what it accepts."""

from __future__ import annotations

import socketserver
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Mailbox:
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    reject_rcpt: set[str] = field(default_factory=set)
    reply_delay_s: float = 0.0  # stored, then this long before "250": a sender killed meanwhile never hears it
    tempfail_data: int = 0  # answer this many messages' end of data with "451" (not stored), then accept


class _Handler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        try:
            self._session()
        except OSError:  # the client went away (tests kill it on purpose)
            return

    def _session(self) -> None:
        box: Mailbox = self.server.mailbox  # type: ignore[attr-defined]
        self.reply("220 sink ESMTP")
        sender, rcpts = "", []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            cmd = line.decode(errors="replace").strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink")
            elif verb == "MAIL":
                sender, rcpts = cmd.split(":", 1)[1].strip(), []
                self.reply("250 ok")
            elif verb == "RCPT":
                addr = cmd.split(":", 1)[1].strip().strip("<>")
                if addr in box.reject_rcpt:
                    self.reply("550 no such user")
                else:
                    rcpts.append(addr)
                    self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go ahead")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                if box.tempfail_data > 0:
                    box.tempfail_data -= 1
                    self.reply("451 try again later")
                    continue
                box.messages.append((sender, rcpts, data))
                if box.reply_delay_s:
                    time.sleep(box.reply_delay_s)  # kept: a relay slow to answer is the condition under test
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


class SmtpSink:
    """``with SmtpSink(port) as box:`` serves SMTP on 127.0.0.1:port until the block ends."""

    def __init__(self, port: int = 0) -> None:
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), _Handler)
        self.server.daemon_threads = True
        self.server.mailbox = Mailbox()  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Mailbox:
        self._thread.start()
        return self.server.mailbox  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

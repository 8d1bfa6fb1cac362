"""The demo's operations step: what an operator watches while the data moves.

A webhook receiver in this process stands for the operator's alerting
system: the source cloud sends it every event, signed; at the end the demo
checks each signature with the secret it was shown once, and prints the
deliveries, the audit trail and the events as `cbr` shows them.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from dataclasses import dataclass, field

from quickstart_clouds import cbr, cbr_json, say


@dataclass
class Receiver:
    """Webhook posts as they arrived: (signature header, raw body)."""

    url: str = ""
    secret: str = ""
    posts: list[tuple[str, bytes]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def verified(self) -> list[dict[str, object]]:
        """The posted events whose signature checks out with the secret."""
        out = []
        for header, body in self.posts:
            parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
            expected = hmac.new(self.secret.encode(), f"{parts.get('t', '')}.".encode() + body,
                                hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, parts.get("v1", "")):
                out.append(json.loads(body))
        return out


def start_webhook() -> Receiver:
    say("an operator's webhook receiver, subscribed to every event of the source cloud")
    receiver = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.posts.append((self.headers.get("X-CBR-Signature", ""), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver.server = server
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/cbr-events"
    made = cbr_json("source", "notification", "target", "create", "--name", "quickstart-ops",
                    "--webhook-url", receiver.url, quiet=True)
    assert isinstance(made, dict)
    receiver.secret = str(made["signing_secret"])
    print(f"$ cbr --profile source notification target create --name quickstart-ops "
          f"--webhook-url {receiver.url}\n  (signing secret shown once: "
          f"{receiver.secret[:10]}..., kept by the receiver)", flush=True)
    return receiver


def report(receiver: Receiver) -> None:
    say("what the operator saw: signed events, their deliveries, the audit trail")
    deadline = time.time() + 30
    while time.time() < deadline and len(receiver.posts) < 1:
        time.sleep(0.2)
    events = receiver.verified()
    kinds: dict[str, int] = {}
    for event in events:
        kinds[str(event.get("type"))] = kinds.get(str(event.get("type")), 0) + 1
    print(f"the webhook received {len(receiver.posts)} events, {len(events)} with a valid "
          f"signature: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())), flush=True)
    if len(events) != len(receiver.posts):
        raise SystemExit("quickstart: a webhook post's signature did not verify")
    cbr("source", "notification", "deliveries", "--page-size", "5")
    cbr("source", "event", "list", "--type", "replication.succeeded")
    cbr("source", "audit", "list", "--action", "cbr:backups:replicate")
    records = cbr_json("source", "audit", "list", "--all", quiet=True)
    assert isinstance(records, list)
    print(f"the audit trail holds {len(records)} records of the source cloud's changes "
          "(cbr audit list --since 1h)", flush=True)
    if receiver.server is not None:
        receiver.server.shutdown()

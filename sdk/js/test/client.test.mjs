// kestrel-sdk against a real `kestrel run` daemon (started by the fixture), plus the failure paths
// (no daemon, garbage, silence, hang-up) against small fake servers.

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  ActionDenied, Client, KestrelError, NoDaemonError, ProtocolError, RemoteError, TransportError, socketPathFor,
} from "../index.js";
import { kestrel, startDaemon, until } from "../testlib/daemon.mjs";

const RULES = `rules:
  - id: lamp-on
    when: "turn on the lamp"
    action: gpio.write
    args: {actuator: lamp, value: 1}
  - id: mail
    when: "mail alice"
    action: send_email
    args: {to: alice@example.com, subject: hi}
`;

describe("against a real daemon", () => {
  let d;
  let c;
  before(async () => {
    d = await startDaemon();
    c = await Client.connect({ stateDir: d.state, timeout: 20 });
  });
  after(async () => {
    c?.close();
    await d?.stop();
  });

  test("status reports the agent, its health and its actuators", async () => {
    const st = await c.status();
    assert.equal(st.health, "ok");
    assert.match(st.agent, /^did:key:z/);
    assert.equal(st.board, "sim");
    assert.deepEqual(st.actuators, { lamp: 0 });
    assert.equal(st.policy.loaded, true);
  });

  test("an allowed call resolves to the decision and the result, and acts", async () => {
    const r = await c.call("gpio.write", { actuator: "lamp", value: 1 });
    assert.equal(r.allowed, true);
    assert.equal(r.decision.allowed, true);
    assert.equal(r.result.value, 1);
    assert.ok(Number.isInteger(r.ledgerSeq) && r.ledgerSeq > 0);
    assert.deepEqual((await c.status()).actuators, { lamp: 1 });
  });

  test("a denial is a value with the rule that refused it, and is in the ledger", async () => {
    const r = await c.call("send_email", { to: "alice@example.com", subject: "Hello" });
    assert.equal(r.allowed, false);
    assert.equal(r.result, null);
    assert.equal(r.decision.allowed, false);
    assert.equal(r.decision.action, "send_email");
    assert.equal(r.decision.rule, "default-deny");
    assert.ok(r.decision.reason.length > 0);
    assert.match(r.message, /policy denied send_email/);
    // the same decision, recorded by the daemon
    const seen = [];
    for await (const rec of c.follow({ kind: "policy.decision" })) {
      seen.push(rec.body);
      if (rec.body.action === "send_email") break;
    }
    const refusal = seen.at(-1);
    assert.equal(refusal.decision, "deny");
    assert.equal(refusal.rule, r.decision.rule);
  });

  test("request('call') throws ActionDenied for a denial, RemoteError for a failed action", async () => {
    await assert.rejects(c.request("call", { action: "fetch_data", args: { url: "http://127.0.0.1/" } }), (err) => {
      assert.ok(err instanceof ActionDenied && err instanceof RemoteError && err instanceof KestrelError);
      assert.equal(err.code, "denied");
      assert.equal(err.exitCode, 5);
      assert.equal(err.decision.rule, "default-deny");
      return true;
    });
    await assert.rejects(c.call("gpio.write", { actuator: "no_such_lamp", value: 1 }), (err) => {
      assert.ok(err instanceof RemoteError && !(err instanceof ActionDenied)); // allowed, then failed
      assert.equal(err.code, "failed");
      assert.equal(err.exitCode, 1);
      assert.match(err.message, /no such actuator/);
      return true;
    });
    await assert.rejects(c.request("no.such.method"), (err) => err instanceof RemoteError &&
      err.code === "bad_request" && err.exitCode === 2 && /methods:/.test(err.hint));
    assert.equal((await c.status()).health, "ok"); // the connection survives error answers
  });

  test("sim drives an input and the daemon sees it", async () => {
    const pins = await c.simList();
    assert.deepEqual(pins.find((p) => p.pin === "GPIO17")?.role, "input");
    const r = await c.sim("GPIO17", 1);
    assert.equal(r.value, 1);
    await until(async () => (await c.status()).values.button === 1, "button == 1");
    await c.sim("GPIO17", 0);
    await until(async () => (await c.status()).values.button === 0, "button == 0");
    await assert.rejects(c.sim("GPIO999", 1), (err) => err instanceof RemoteError);
  });

  test("many requests in flight on one connection are each answered", async () => {
    const values = Array.from({ length: 20 }, (_, i) => i % 2);
    const got = await Promise.all(values.map((value) => c.call("gpio.write", { actuator: "lamp", value })));
    assert.deepEqual(got.map((r) => r.result.value), values);
  });

  test("follow streams the ledger from a sequence number and stops when the loop is left", async () => {
    const kinds = [];
    let first = null;
    for await (const rec of c.follow({ sinceSeq: 0 })) {
      first ??= rec.seq;
      kinds.push(rec.kind);
      assert.match(rec.digest.$hex, /^[0-9a-f]{64}$/);
      if (kinds.includes("ota.applied") && kinds.filter((k) => k === "action.result").length >= 2) break;
    }
    assert.equal(first, 0);
    assert.ok(kinds.includes("policy.decision"));
    const later = [];
    const ac = new AbortController();
    const seqNow = (await c.status()).ledger.size;
    const write = c.call("gpio.write", { actuator: "lamp", value: 1 });
    for await (const rec of c.follow({ sinceSeq: seqNow, kind: "action.result", signal: ac.signal })) {
      later.push(rec);
      ac.abort();
    }
    await write;
    assert.equal(later.length, 1);
    assert.ok(later[0].seq >= seqNow && later[0].body.action === "gpio.write");
  });

  test("ask streams each step with its decision, then the outcome", async () => {
    const items = [];
    for await (const item of c.ask("turn on the lamp", { rules: RULES, rules_only: true })) items.push(item);
    const steps = items.filter((i) => i.type === "step");
    const outcome = items.at(-1);
    assert.equal(outcome.type, "outcome");
    assert.equal(outcome.status, "done");
    assert.ok(steps.length >= 1);
    assert.deepEqual(steps[0].call, { action: "gpio.write", args: { actuator: "lamp", value: 1 } });
    assert.equal(steps[0].decision.allowed, true);

    const refused = [];
    for await (const item of c.ask("mail alice", { rules: RULES, rules_only: true })) refused.push(item);
    const step = refused.find((i) => i.type === "step" && i.call);
    assert.equal(step.call.action, "send_email");
    assert.equal(step.decision.allowed, false);
    assert.equal(step.result, null);

    await assert.rejects(async () => {
      for await (const _ of c.ask("", {})) { /* a bad goal is an error answer before any step */ }
    }, (err) => err instanceof RemoteError);
  });

  test("a state directory reached by a path longer than sun_path", async () => {
    const base = mkdtempSync(join(tmpdir(), "kestrel-js-long-"));
    try {
      const deep = join(base, "d".repeat(60), "e".repeat(60));
      mkdirSync(deep, { recursive: true });
      symlinkSync(join(d.state, "run"), join(deep, "run"));
      assert.ok(Buffer.byteLength(socketPathFor(deep)) > 107);
      const far = await Client.connect({ stateDir: deep });
      try {
        assert.equal((await far.status()).health, "ok");
      } finally {
        far.close();
      }
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });

  test("the CLI and the SDK see the same daemon", async () => {
    const { stdout } = await kestrel(d.env, "status", "--json");
    assert.equal(JSON.parse(stdout).agent, (await c.status()).agent);
  });
});

describe("failures", () => {
  let dir;
  before(() => { dir = mkdtempSync(join(tmpdir(), "kestrel-js-fake-")); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("no daemon: NoDaemonError with a hint", async () => {
    await assert.rejects(Client.connect({ stateDir: join(dir, "nothing-here") }), (err) => {
      assert.ok(err instanceof NoDaemonError && err instanceof TransportError);
      assert.equal(err.exitCode, 3);
      assert.match(err.hint, /kestrel run/);
      return true;
    });
  });

  // A fake daemon that reads one request, then behaves as told.
  async function fake(behaviour) {
    const path = join(dir, `${behaviour}.sock`);
    const server = createServer((sock) => {
      sock.once("data", () => {
        if (behaviour === "garbage") sock.write("this is not json\n");
        if (behaviour === "hangup") sock.destroy();
        if (behaviour === "not-a-reply") sock.write('{"id": 1}\n');
        if (behaviour === "forbidden") {
          sock.end('{"id": null, "error": {"code": "forbidden", "message": "uid 1000 may not use this control socket"}}\n');
        }
        // "silent": never answers
      });
    });
    await new Promise((res) => server.listen(path, res));
    return { path, close: () => new Promise((res) => { server.close(res); server.unref(); }) };
  }

  for (const [behaviour, Expected] of [["garbage", ProtocolError], ["not-a-reply", ProtocolError],
    ["hangup", TransportError], ["silent", TransportError], ["forbidden", RemoteError]]) {
    test(`a daemon that answers with ${behaviour}: ${Expected.name}`, async () => {
      const srv = await fake(behaviour);
      const c = await Client.connect({ socketPath: srv.path, timeout: 0.5 });
      try {
        await assert.rejects(c.status(), (err) => {
          assert.ok(err instanceof Expected, `${err.name}: ${err.message}`);
          if (behaviour === "forbidden") assert.equal(err.exitCode, 77);
          if (behaviour === "silent") assert.match(err.message, /did not answer within 0.5s/);
          return true;
        });
      } finally {
        c.close();
        await srv.close();
      }
    });
  }
});

// Kestrel SDK for Node.js: a client of a running Kestrel daemon over its local control socket.
//
//   import { Client } from "kestrel-sdk";
//   const c = await Client.connect({ stateDir });       // STATE/run/control.sock
//   await c.status();
//   const r = await c.call("send_email", { to, subject }); // { allowed, decision, result }: a denial is a value
//   for await (const step of c.ask("turn on the fan")) ...  // steps, then the outcome
//   c.close();
//
// Wire format: docs/control-protocol.md (one JSON object per line). No dependencies beyond Node's
// standard library. Typed errors mirror kestrel.sdk (Python): TransportError, NoDaemonError,
// RemoteError, ActionDenied, ProtocolError, all KestrelError.

import { closeSync, openSync, constants as fsConstants } from "node:fs";
import { connect as netConnect } from "node:net";
import { homedir } from "node:os";
import { basename, dirname, join } from "node:path";

export const MAX_LINE = 256 * 1024;
const MAX_REPLY_LINE = MAX_LINE * 4; // the same bound kestrel.sdk puts on the daemon's lines
const MAX_SUN_PATH = 107;
const UPLOAD_CHUNK = 96 * 1024;
const EXIT_CODES = { denied: 5, forbidden: 77, bad_request: 2, unknown_action: 2 };

// -- errors --------------------------------------------------------------------------------------

/** Root of every error this SDK throws; `hint` says what to do about it. */
export class KestrelError extends Error {
  constructor(message, { hint = null, exitCode = 1 } = {}) {
    super(message);
    this.name = new.target.name;
    this.hint = hint ?? null;
    this.exitCode = exitCode;
  }
}

/** The daemon could not be reached, did not answer in time, or hung up. Retrying may help. */
export class TransportError extends KestrelError {
  constructor(message, opts = {}) {
    super(message, { exitCode: 3, ...opts });
  }
}

/** No daemon listens on the control socket (none runs on that state directory). */
export class NoDaemonError extends TransportError {}

/** The daemon sent something that is not a reply (docs/control-protocol.md). */
export class ProtocolError extends KestrelError {
  constructor(message, opts = {}) {
    super(message, { exitCode: 2, ...opts });
    this.code = "bad_request";
  }
}

/** The daemon answered a request with an error: `code` is the wire code (bad_request, forbidden,
 * denied, failed, internal, unknown_action), `reason` the daemon-side error's own code. */
export class RemoteError extends KestrelError {
  constructor(code, message, { hint = null, reason = null, exitCode = null, decision = null } = {}) {
    const exit = Number.isInteger(exitCode) && exitCode > 0 && exitCode < 126 ? exitCode : (EXIT_CODES[code] ?? 1);
    super(message, { hint, exitCode: exit });
    this.code = code;
    this.reason = reason;
    this.decision = decision;
  }
}

/** The policy refused the action (the refusal is in the ledger). `Client.call` returns a denial as a
 * value instead; `Client.request("call", ...)` throws this. */
export class ActionDenied extends RemoteError {}

// -- where the socket is -------------------------------------------------------------------------

/** The default state directory: $KESTREL_STATE, else $XDG_STATE_HOME/kestrel, else ~/.local/state/kestrel. */
export function defaultStateDir() {
  if (process.env.KESTREL_STATE) return process.env.KESTREL_STATE;
  const xdg = process.env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  return join(xdg, "kestrel");
}

/** `STATE/run/control.sock` of a state directory (the default one when not given). */
export function socketPathFor(stateDir) {
  return join(stateDir || defaultStateDir(), "run", "control.sock");
}

// sun_path holds 107 bytes: a longer path is reached through /proc/self/fd/N/NAME of its directory.
function shortPath(path) {
  if (Buffer.byteLength(path) <= MAX_SUN_PATH) return { path, release() {} };
  let fd;
  try {
    fd = openSync(dirname(path), fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  } catch (err) {
    return { path, release() {}, error: err };
  }
  return { path: `/proc/self/fd/${fd}/${basename(path)}`, release: () => closeSync(fd) };
}

function connectError(err, socketPath) {
  if (err.code === "ENOENT" || err.code === "ECONNREFUSED") {
    return new NoDaemonError(`no Kestrel daemon is listening on ${socketPath}`, {
      hint: "start it with `kestrel run` (same --state), or pass the right stateDir" });
  }
  if (err.code === "EACCES" || err.code === "EPERM") {
    return new TransportError(`not allowed to open ${socketPath}`, {
      hint: "run as the daemon's user, or join the control group set in the device config (control.group)" });
  }
  return new TransportError(`cannot connect to ${socketPath}: ${err.message}`);
}

function remoteError(err) {
  const code = typeof err.code === "string" && err.code ? err.code : "failed";
  const Cls = code === "denied" ? ActionDenied : RemoteError;
  return new Cls(code, err.message, {
    hint: typeof err.hint === "string" ? err.hint : null,
    reason: typeof err.reason === "string" ? err.reason : null,
    exitCode: err.exit,
    decision: err.decision && typeof err.decision === "object" ? err.decision : null,
  });
}

/** Parse one line from the daemon (throws ProtocolError when it is not a reply). */
export function decodeReply(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    throw new ProtocolError(`daemon sent a line that is not JSON: ${err.message}`);
  }
  if (msg === null || typeof msg !== "object" || Array.isArray(msg) ||
      !("result" in msg || "error" in msg || "event" in msg)) {
    throw new ProtocolError("daemon sent a message that is not a reply");
  }
  const err = msg.error;
  if (err !== undefined && err !== null && !(typeof err === "object" && typeof err.message === "string")) {
    throw new ProtocolError("daemon sent a malformed error");
  }
  return msg;
}

// -- one connection ------------------------------------------------------------------------------

// A control-socket connection: requests are answered in order, matched by id; stream events go to
// the request's onEvent. Any failure fails every pending request and closes the connection.
class Connection {
  constructor(socketPath) {
    this.socketPath = socketPath;
    this.sock = null;
    this.buf = "";
    this.nextId = 1;
    this.pending = new Map();
    this.closed = false;
  }

  open() {
    return new Promise((resolve, reject) => {
      const target = shortPath(this.socketPath);
      if (target.error) {
        reject(connectError(target.error, this.socketPath));
        return;
      }
      const sock = netConnect({ path: target.path });
      let settled = false;
      sock.setEncoding("utf8");
      sock.once("connect", () => {
        target.release();
        settled = true;
        this.sock = sock;
        resolve(this);
      });
      sock.on("error", (err) => {
        if (!settled) {
          settled = true;
          target.release();
          reject(connectError(err, this.socketPath));
        } else {
          this.fail(new TransportError(`control connection failed: ${err.message}`));
        }
      });
      sock.on("data", (chunk) => this.onData(chunk));
      sock.on("close", () => this.fail(new TransportError("the daemon closed the control connection")));
    });
  }

  onData(chunk) {
    this.buf += chunk;
    let nl;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (!line.trim()) continue;
      let msg;
      try {
        msg = decodeReply(line);
      } catch (err) {
        this.fail(err);
        return;
      }
      this.dispatch(msg);
      if (this.closed) return;
    }
    if (this.buf.length > MAX_REPLY_LINE) this.fail(new TransportError("the daemon sent an over-long line"));
  }

  dispatch(msg) {
    if (msg.id === null || msg.id === undefined) {
      if (msg.error) this.fail(remoteError(msg.error)); // e.g. forbidden: sent before the daemon hangs up
      return;
    }
    const req = this.pending.get(msg.id);
    if (!req) return;
    if ("event" in msg) {
      req.onEvent?.(msg.event);
      return;
    }
    this.pending.delete(msg.id);
    clearTimeout(req.timer);
    if (msg.error) req.reject(remoteError(msg.error));
    else req.resolve(msg.result);
  }

  send(method, params, { timeout = null, onEvent = null } = {}) {
    if (this.closed || !this.sock) {
      return Promise.reject(new TransportError("the control connection is closed"));
    }
    const id = this.nextId++;
    const line = JSON.stringify({ id, method, params: params ?? {} }) + "\n";
    if (Buffer.byteLength(line) > MAX_LINE) {
      return Promise.reject(new ProtocolError(`request longer than ${MAX_LINE} bytes`));
    }
    return new Promise((resolve, reject) => {
      const req = { resolve, reject, onEvent, timer: null };
      if (timeout !== null && timeout !== undefined) {
        req.timer = setTimeout(() => this.fail(new TransportError(`the daemon did not answer within ${timeout}s`)),
          timeout * 1000);
      }
      this.pending.set(id, req);
      this.sock.write(line);
    });
  }

  fail(err) {
    if (this.closed) return;
    this.closed = true;
    for (const req of this.pending.values()) {
      clearTimeout(req.timer);
      req.reject(err);
    }
    this.pending.clear();
    this.sock?.destroy();
  }

  close() {
    this.fail(new TransportError("the client closed the control connection"));
  }
}

// A pull-based queue of a streaming request's events: bounded by the socket's own back-pressure
// (the socket is paused while `max` events wait to be taken).
class EventQueue {
  constructor(conn, max = 1024) {
    this.conn = conn;
    this.max = max;
    this.items = [];
    this.waiter = null;
  }

  push(item) {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w(item);
      return;
    }
    this.items.push(item);
    if (this.items.length >= this.max) this.conn.sock?.pause();
  }

  next() {
    if (this.items.length) {
      const item = this.items.shift();
      if (this.items.length < this.max / 2) this.conn.sock?.resume();
      return Promise.resolve(item);
    }
    return new Promise((resolve) => { this.waiter = resolve; });
  }
}

// -- the client ----------------------------------------------------------------------------------

export class Client {
  /** Use `Client.connect()`: it opens the connection (NoDaemonError when no daemon listens). */
  constructor({ stateDir = null, socketPath = null, timeout = 30 } = {}) {
    this.socketPath = socketPath || socketPathFor(stateDir);
    this.timeout = timeout;
    this.conn = null;
  }

  /** Connect to `STATE/run/control.sock` (`stateDir` default: $KESTREL_STATE or ~/.local/state/kestrel). */
  static async connect(options = {}) {
    const client = new Client(options);
    await client.#connection();
    return client;
  }

  async #connection() {
    if (this.conn && !this.conn.closed) return this.conn;
    this.conn = await new Connection(this.socketPath).open();
    return this.conn;
  }

  /** Send one request and resolve to its result (RemoteError on an error answer).
   * `wait`: seconds the daemon may legitimately take on top of `timeout` (peer.receive). */
  async request(method, params = {}, { wait = 0 } = {}) {
    const conn = await this.#connection();
    const timeout = this.timeout === null ? null : this.timeout + wait;
    return conn.send(method, params, { timeout });
  }

  /** Ask the daemon to run `action` under policy. Resolves to `{allowed, decision, result, ...}`:
   * a denial is a value (`allowed: false`, `decision.rule` is the rule that refused it), not a throw.
   * Other errors (bad arguments, a failed action) throw RemoteError. */
  async call(action, args = {}) {
    try {
      const result = await this.request("call", { action, args });
      const ledgerSeq = result && typeof result === "object" ? result.ledger_seq ?? null : null;
      return { allowed: true, action, decision: { allowed: true, action }, result, ledgerSeq };
    } catch (err) {
      if (!(err instanceof ActionDenied)) throw err;
      return { allowed: false, action, decision: deniedDecision(action, err), result: null, ledgerSeq: null,
        message: err.message, hint: err.hint };
    }
  }

  status() { return this.request("status"); }

  reload() { return this.request("reload"); }

  /** Drive an input of the simulated board (`kestrel sim PIN VALUE`). */
  sim(pin, value) { return this.request("sim.drive", { pin, value: value ? 1 : 0 }); }

  simDrive(pin, value) { return this.sim(pin, value); }

  simList() { return this.request("sim.list"); }

  /** Peer messages received and verified since the last call (waits up to `timeout` s for the first). */
  messages({ timeout = 0, max = 100 } = {}) {
    return this.request("peer.receive", { timeout, max }, { wait: timeout });
  }

  async receive(timeout = 30) {
    const got = await this.messages({ timeout, max: 1 });
    return got.length ? got[0] : null;
  }

  /** Have the daemon verify and activate a signed bundle (sent in chunks). */
  async otaApply(bundle) {
    const data = Buffer.from(bundle);
    let result;
    for (let off = 0; off < Math.max(data.length, 1); off += UPLOAD_CHUNK) {
      const chunk = data.subarray(off, off + UPLOAD_CHUNK);
      result = await this.request("ota.apply", { data: { $hex: chunk.toString("hex") },
        more: off + UPLOAD_CHUNK < data.length }, { wait: 60 });
    }
    return result;
  }

  otaRollback({ reason = "operator" } = {}) { return this.request("ota.rollback", { reason }, { wait: 60 }); }

  trustApply(root) { return this.request("trust.apply", { root: { $hex: Buffer.from(root).toString("hex") } }); }

  /** Plan and act on `goal`: yields each `{type: "step", ...}` as it happens, then the
   * `{type: "outcome", ...}`. Own connection; leaving the loop early stops the run at its next step.
   * `options`: rules, rules_only, endpoint, llm, api, tools, budgets, threads, memory. */
  ask(goal, options = {}) {
    const budget = Number(options?.budgets?.time_s ?? 60);
    const timeout = this.timeout === null ? null : this.timeout + budget;
    return this.#stream("ask", { goal, options }, { timeout, final: true });
  }

  /** Ledger records from `sinceSeq` on, then each new one as it is appended (forever). Own
   * connection; leave the loop (or pass an AbortSignal) to stop. */
  follow({ sinceSeq = 0, kind = null, signal = null } = {}) {
    const params = { since_seq: sinceSeq };
    if (kind) params.kind = kind;
    return this.#stream("follow", params, { timeout: null, final: false, signal });
  }

  async *#stream(method, params, { timeout, final, signal = null }) {
    const conn = await new Connection(this.socketPath).open();
    const queue = new EventQueue(conn);
    const onAbort = () => conn.close();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      conn.send(method, params, { timeout, onEvent: (event) => queue.push({ event }) })
        .then((result) => queue.push({ result }), (error) => queue.push({ error }));
      while (true) {
        const item = await queue.next();
        if ("event" in item) {
          yield item.event;
        } else if ("error" in item) {
          if (signal?.aborted) return;
          throw item.error;
        } else {
          if (final) yield item.result;
          return;
        }
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      conn.close();
    }
  }

  close() {
    this.conn?.close();
    this.conn = null;
  }
}

// The decision behind a denial: the daemon's structured `decision` (rule, reason), else the rule
// read from its message "policy denied ACTION: REASON (rule RULE)".
function deniedDecision(action, err) {
  const d = err.decision ?? {};
  const m = /^policy denied [^:]*: (.*) \(rule ([^()]*)\)$/s.exec(err.message);
  return {
    allowed: false,
    action: typeof d.action === "string" ? d.action : action,
    rule: typeof d.rule === "string" ? d.rule : (m ? m[2] : null),
    reason: typeof d.reason === "string" ? d.reason : (m ? m[1] : err.message),
  };
}

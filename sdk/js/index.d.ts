// Types of kestrel-sdk (hand-written; the package ships plain JavaScript, no build step).
// Wire format: docs/control-protocol.md in the Kestrel repository.

/** The longest line (bytes) the daemon accepts. */
export declare const MAX_LINE: number;

/** Bytes inside ledger bodies travel as `{"$hex": "<lowercase hex>"}`. */
export interface Hex {
  $hex: string;
}

export type JsonValue = null | boolean | number | string | Hex | JsonValue[] | { [key: string]: JsonValue };

export interface ClientOptions {
  /** State directory of the daemon (default: $KESTREL_STATE, else $XDG_STATE_HOME/kestrel or ~/.local/state/kestrel). */
  stateDir?: string | null;
  /** The control socket itself (default: STATE/run/control.sock). */
  socketPath?: string | null;
  /** Seconds to wait for each answer (default 30; null: forever). */
  timeout?: number | null;
}

/** The policy's decision on a call. */
export interface Decision {
  allowed: boolean;
  action: string;
  /** The rule that decided a denial, e.g. "default-deny", "deny[0]", "restrictions[0]" (undefined for an allow). */
  rule?: string | null;
  reason?: string;
}

export interface CallAllowed<R = Record<string, JsonValue>> {
  allowed: true;
  action: string;
  decision: Decision & { allowed: true };
  /** The action's reply (docs/device-config.md, "Actions") plus `ledger_seq`. */
  result: R;
  /** Sequence number of the call's `action.result` record (durable before the answer). */
  ledgerSeq: number | null;
}

export interface CallDenied {
  allowed: false;
  action: string;
  decision: Decision & { allowed: false; rule: string | null; reason: string };
  result: null;
  ledgerSeq: null;
  message: string;
  hint: string | null;
}

export type CallOutcome<R = Record<string, JsonValue>> = CallAllowed<R> | CallDenied;

export interface Status {
  agent: string;
  board: string;
  config: string;
  pid: number;
  /** "ok" or "unhealthy: REASON". */
  health: string;
  uptime_s: number;
  sensors: Record<string, JsonValue>;
  values: Record<string, JsonValue>;
  actuators: Record<string, JsonValue>;
  outbox: { pending: number; sent: number; failed: number; last_error: string | null };
  ledger: { size: number; signed: number; first_seq: number };
  actions: Record<string, number>;
  counters: Record<string, number>;
  mqtt: { connected: boolean } | null;
  control: { served: number; refused: number };
  policy: { bundle: string | null; loaded: boolean; error: string | null };
  last_reload_error: string | null;
  [key: string]: JsonValue | undefined;
}

export interface SimDriveResult {
  pin: string;
  chip: string;
  line: number;
  value: 0 | 1;
}

export interface SimPin {
  pin: string;
  chip: string;
  line: number;
  role: "input" | "output";
  name: string;
  level: number;
}

export interface LedgerRecord {
  seq: number;
  time: number;
  kind: string;
  body: { [key: string]: JsonValue };
  /** SHA-256 of the record's stored bytes. */
  digest: Hex;
}

export interface PeerMessage {
  from: string;
  to: string;
  seq: number;
  time_ms: number;
  encrypted: boolean;
  body: JsonValue;
  digest: string;
}

export interface AskOptions {
  rules?: string;
  rules_source?: string;
  rules_only?: boolean;
  endpoint?: string;
  llm?: string;
  api?: "completions" | "chat";
  tools?: string[];
  budgets?: { max_steps?: number; max_tokens?: number; time_s?: number };
  threads?: number;
  memory?: boolean;
}

export interface AskStep {
  type: "step";
  index: number;
  planner: string;
  text: string;
  call: { action: string; args: { [key: string]: JsonValue } } | null;
  decision: { allowed: boolean; rule: string; reason: string } | null;
  result: { ok: boolean; summary: string } | null;
  error: string | null;
  final: string | null;
  seq: number | null;
}

export interface AskOutcome {
  type: "outcome";
  status: string;
  final: string | null;
  steps: number;
  tokens: number;
  elapsed_s?: number;
  handed_off?: boolean;
  error: string | null;
  executed?: boolean;
  decisions?: boolean[];
  [key: string]: JsonValue | undefined;
}

export interface FollowOptions {
  /** First sequence number to stream (default 0). */
  sinceSeq?: number;
  /** Only records of this kind, e.g. "action.result". */
  kind?: string | null;
  /** Abort to stop following (leaving the for-await loop does too). */
  signal?: AbortSignal | null;
}

export declare class Client {
  /** Prefer `Client.connect()`. */
  constructor(options?: ClientOptions);
  /** Connect to the daemon's control socket; rejects with NoDaemonError when none listens. */
  static connect(options?: ClientOptions): Promise<Client>;
  readonly socketPath: string;
  timeout: number | null;

  /** One request; resolves to its result, rejects with RemoteError (ActionDenied for "denied"). */
  request(method: string, params?: Record<string, unknown>, options?: { wait?: number }): Promise<unknown>;
  status(): Promise<Status>;
  /** Run an action under policy: a denial resolves (`allowed: false`), it does not reject. */
  call<R = Record<string, JsonValue>>(action: string, args?: Record<string, unknown>): Promise<CallOutcome<R>>;
  reload(): Promise<{ reloaded: boolean; config?: string; error?: string }>;
  /** Drive an input of the simulated board (like `kestrel sim PIN VALUE`). */
  sim(pin: string, value: 0 | 1 | boolean): Promise<SimDriveResult>;
  simDrive(pin: string, value: 0 | 1 | boolean): Promise<SimDriveResult>;
  simList(): Promise<SimPin[]>;
  messages(options?: { timeout?: number; max?: number }): Promise<PeerMessage[]>;
  receive(timeout?: number): Promise<PeerMessage | null>;
  otaApply(bundle: Uint8Array): Promise<Record<string, JsonValue>>;
  otaRollback(options?: { reason?: string }): Promise<Record<string, JsonValue>>;
  trustApply(root: Uint8Array): Promise<Record<string, JsonValue>>;
  /** Plan and act on a goal: each step as it happens, then the outcome (own connection). */
  ask(goal: string, options?: AskOptions): AsyncGenerator<AskStep | AskOutcome, void, undefined>;
  /** Ledger records from `sinceSeq` on, then new ones as they are appended (own connection, never ends). */
  follow(options?: FollowOptions): AsyncGenerator<LedgerRecord, void, undefined>;
  close(): void;
}

/** Root of every error of this SDK. */
export declare class KestrelError extends Error {
  constructor(message: string, options?: { hint?: string | null; exitCode?: number });
  /** What to do about it. */
  hint: string | null;
  /** The exit status the `kestrel` CLI uses for the same error. */
  exitCode: number;
}

/** The daemon could not be reached, did not answer within the timeout, or hung up. */
export declare class TransportError extends KestrelError {}

/** No daemon listens on the control socket. */
export declare class NoDaemonError extends TransportError {}

/** The daemon sent something that is not a reply. */
export declare class ProtocolError extends KestrelError {
  code: "bad_request";
}

export type WireCode = "bad_request" | "forbidden" | "denied" | "failed" | "internal" | "unknown_action";

/** The daemon answered with an error. */
export declare class RemoteError extends KestrelError {
  constructor(code: string, message: string, options?: {
    hint?: string | null; reason?: string | null; exitCode?: number | null; decision?: Record<string, unknown> | null;
  });
  code: WireCode | string;
  /** The daemon-side error's own code (e.g. an OTA refusal's "expired"). */
  reason: string | null;
  /** For a denial: {action, rule, reason}. */
  decision: { action?: string; rule?: string; reason?: string } | null;
}

/** The policy refused the action (thrown by `request("call", ...)`; `call()` returns it as a value). */
export declare class ActionDenied extends RemoteError {}

export declare function defaultStateDir(): string;
export declare function socketPathFor(stateDir?: string | null): string;
export declare function decodeReply(line: string): { id?: unknown; result?: unknown; error?: unknown; event?: unknown };

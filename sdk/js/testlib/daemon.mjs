// Test fixture: a real `kestrel run` daemon on the sim board, provisioned the way an owner does it
// (`kestrel init-agent`, `kestrel set-policy` with an owner key), in a fresh temporary state directory.
//
// The interpreter that has Kestrel installed: $KESTREL_PYTHON, else the repository's .venv, else python3.

import { spawn, execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { Client } from "../index.js";

const run = promisify(execFile);
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

export function python() {
  if (process.env.KESTREL_PYTHON) return process.env.KESTREL_PYTHON;
  const venv = join(REPO, ".venv", "bin", "python");
  return existsSync(venv) ? venv : "python3";
}

export const DEVICE_CONFIG = `version: 1
name: js-sdk-test
board: sim
sensors:
  button: {type: gpio, pin: GPIO17, edge: both, bias: pull_down}
actuators:
  lamp: {type: gpio, pin: GPIO27}
`;

/** Run `kestrel ARGS` to completion; resolves to {stdout, stderr}; rejects with its output on failure. */
export async function kestrel(env, ...args) {
  try {
    return await run(python(), ["-m", "kestrel.cli", ...args], { env, timeout: 120_000 });
  } catch (err) {
    throw new Error(`kestrel ${args.join(" ")} failed (${err.code}):\n${err.stdout}\n${err.stderr}`);
  }
}

/** Provision a state directory with `policy`, start `kestrel run`, resolve once its status is healthy. */
export async function startDaemon({ policy = "actions: [gpio.write]\n", config = DEVICE_CONFIG } = {}) {
  const root = mkdtempSync(join(tmpdir(), "kestrel-js-"));
  const state = join(root, "state");
  const env = { ...process.env, KESTREL_STATE: state, KESTREL_OWNER_KEY: join(root, "owner.key"),
    KESTREL_OWNER_PASSPHRASE: "js-sdk-test-owner" };
  delete env.NOTIFY_SOCKET;
  writeFileSync(join(root, "policy.yaml"), policy);
  writeFileSync(join(root, "device.yaml"), config);
  await kestrel(env, "init-agent", "--name", "js-sdk-test");
  await kestrel(env, "set-policy", join(root, "policy.yaml"));

  const proc = spawn(python(), ["-m", "kestrel.cli", "run", "--config", join(root, "device.yaml"),
    "--log-level", "warning"], { env, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  proc.stderr.setEncoding("utf8").on("data", (d) => { stderr += d; });
  const exited = new Promise((res) => proc.once("exit", (code, signal) => res({ code, signal })));
  let done = false;
  exited.then(() => { done = true; });

  const stop = async () => {
    if (!done) {
      proc.kill("SIGTERM");
      const { code } = await exited;
      if (code !== 0) throw new Error(`kestrel run exited ${code}:\n${stderr}`);
    }
    rmSync(root, { recursive: true, force: true });
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (done) throw new Error(`kestrel run exited early:\n${stderr}`);
    try {
      const c = await Client.connect({ stateDir: state, timeout: 5 });
      try {
        if ((await c.status()).health === "ok") break;
      } finally {
        c.close();
      }
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      await stop().catch(() => {});
      throw new Error(`the daemon did not come up in 60 s:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { root, state, env, proc, stop, stderr: () => stderr };
}

/** Wait until `check()` resolves truthy (polling a condition, bounded by `ms`). */
export async function until(check, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const got = await check();
    if (got) return got;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Shared by the client-driven gateway tests: npm dependency loading (failing loudly when tests/npm has
// not been installed), starting troupe_gateway_test_server (the gateway over a fake engine) or the real
// `troupe serve` on a free port, and small assertions.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const npmDir = process.env.TROUPE_NPM_DIR || path.resolve(here, '../../npm');
export const repoRoot = path.resolve(here, '../../..');
export const serverBin = process.env.TROUPE_GATEWAY_SERVER ||
    path.resolve(repoRoot, 'build/tests/gateway/troupe_gateway_test_server');
export const troupeBin = process.env.TROUPE_BIN || path.resolve(repoRoot, 'build/cli/troupe');

export function requireNpm(name) {
  if (!fs.existsSync(path.join(npmDir, 'node_modules', name))) {
    console.error(`FAIL: npm package '${name}' is missing from ${npmDir}/node_modules: run \`npm ci --prefix tests/npm\``);
    process.exit(1);
  }
  return createRequire(path.join(npmDir, 'package.json'))(name);
}

let failures = 0;
let checks = 0;
export function check(cond, what, extra) {
  checks++;
  if (!cond) {
    failures++;
    console.error(`FAIL: ${what}` + (extra !== undefined ? ` (${typeof extra === 'string' ? extra : JSON.stringify(extra)})` : ''));
  }
}
export function eq(a, b, what) { check(JSON.stringify(a) === JSON.stringify(b), what, `got ${JSON.stringify(a)}, want ${JSON.stringify(b)}`); }
export function finish(name) {
  console.log(`${name}: ${checks - failures}/${checks} checks passed`);
  process.exit(failures ? 1 : 0);
}
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The phrase the fake engine writes: sequence i starts (seed + 7 i) characters in.
const phrase = 'the quick brown fox jumps over the lazy dog ';
export function expectedText(seed, index, n) {
  let s = '';
  for (let k = 0; k < n; k++) s += phrase[(seed + 7 * index + k) % phrase.length];
  return s;
}

// Spawns `bin args`, waits for its "listening on [HOST:]PORT" line on stdout (a whole line, so a port
// split across two reads is never taken for a shorter one) and returns a handle.
async function launch(bin, args, { env, cwd, startMs = 10000 } = {}) {
  const proc = spawn(bin, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  let out = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${path.basename(bin)} did not start: ${out}`)), startMs);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/^listening on (?:(\S+):)?(\d+)\r?$/m);
      if (m) { clearTimeout(timer); resolve(Number(m[2])); }
    });
    proc.on('error', (e) => { clearTimeout(timer); reject(e); });
    proc.on('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`${path.basename(bin)} exited with ${code ?? sig}: ${out}`)); });
  });
  const exited = new Promise((r) => {
    if (proc.exitCode !== null || proc.signalCode !== null) r({ code: proc.exitCode, sig: proc.signalCode });
    proc.on('exit', (code, sig) => r({ code, sig }));
  });
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    proc,
    output: () => out,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
}

export async function startServer(args = [], { env } = {}) {
  if (!fs.existsSync(serverBin)) {
    console.error(`FAIL: ${serverBin} is not built (set TROUPE_GATEWAY_SERVER)`);
    process.exit(1);
  }
  return launch(serverBin, ['--port', '0', ...args], { env });
}

// The real server: `troupe serve --config configs/default.yaml --port 0 ARGS` from the repository root
// (the config names models/default relative to it), on the CPU worker unless ARGS say otherwise. It
// listens before the model loads (/ready 503 meanwhile); this waits until /ready says 200.
export async function startTroupe(args = [], { env, readyMs = 60000 } = {}) {
  if (!fs.existsSync(troupeBin)) {
    console.error(`FAIL: ${troupeBin} is not built (set TROUPE_BIN)`);
    process.exit(1);
  }
  const srv = await launch(troupeBin, ['serve', '--config', path.join(repoRoot, 'configs/default.yaml'),
    '--port', '0', '--device', 'cpu', ...args], { env, cwd: repoRoot, startMs: readyMs });
  const deadline = Date.now() + readyMs;
  for (;;) {
    let status = 0;
    try { status = (await fetch(srv.url + '/ready')).status; } catch (e) { /* not yet */ }
    if (status === 200) break;
    if (srv.proc.exitCode !== null || srv.proc.signalCode !== null || Date.now() > deadline) {
      await srv.stop();
      throw new Error(`troupe serve did not become ready (last /ready status ${status})`);
    }
    await sleep(50);
  }
  return srv;
}

// Prometheus text -> { 'name{labels}': value }.
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

export async function metrics(url, headers = {}) {
  return parseMetrics(await (await fetch(url + '/metrics', { headers })).text());
}

// Polls /metrics until pred(parsed metrics) holds or `ms` pass; returns the last reading either way.
export async function waitMetrics(url, pred, ms = 5000) {
  const deadline = Date.now() + ms;
  let m = await metrics(url);
  while (!pred(m) && Date.now() < deadline) {
    await sleep(10);
    m = await metrics(url);
  }
  return m;
}

// Reads an SSE response body into its parsed data records; '[DONE]' stays a string.
export async function readSSE(res, onEvent) {
  const events = [];
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body) {
    buf += decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const rec = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!rec.startsWith('data: ')) continue;
      const data = rec.slice(6);
      const ev = data === '[DONE]' ? data : JSON.parse(data);
      events.push(ev);
      if (onEvent) onEvent(ev);
    }
  }
  return events;
}

// A /v1/ws client (npm ws) that keeps every frame: waitFor(pred) resolves with the first frame, already
// received or still to come, that matches.
export function connectWs(url, opts) {
  const WebSocket = requireNpm('ws');
  const ws = new WebSocket(url, opts);
  const frames = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const f = isBinary ? { binary: true } : JSON.parse(data.toString());
    frames.push(f);
    for (const w of [...waiters]) if (w.pred(f)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(f); }
  });
  const closed = new Promise((r) => ws.on('close', (code, reason) => r({ code, reason: reason.toString() })));
  const opened = new Promise((r, j) => { ws.on('open', r); ws.on('error', j); });
  const waitFor = (pred, ms = 5000) => {
    const hit = frames.find(pred);
    if (hit) return Promise.resolve(hit);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      waiters.push(w);
      setTimeout(() => reject(new Error('timed out waiting for a frame')), ms);
    });
  };
  const send = (obj) => ws.send(typeof obj === 'string' ? obj : JSON.stringify(obj));
  return { ws, frames, closed, opened, waitFor, send };
}

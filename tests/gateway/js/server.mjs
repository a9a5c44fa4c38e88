// Shared by the client-driven gateway tests: npm dependency loading (failing loudly when tests/npm has
// not been installed), starting troupe_gateway_test_server on a free port, and small assertions.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const npmDir = process.env.TROUPE_NPM_DIR || path.resolve(here, '../../npm');
export const serverBin = process.env.TROUPE_GATEWAY_SERVER ||
    path.resolve(here, '../../../build/tests/gateway/troupe_gateway_test_server');

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

export async function startServer(args = [], { env } = {}) {
  if (!fs.existsSync(serverBin)) {
    console.error(`FAIL: ${serverBin} is not built (set TROUPE_GATEWAY_SERVER)`);
    process.exit(1);
  }
  const proc = spawn(serverBin, ['--port', '0', ...args], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } });
  let out = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start: ' + out)), 10000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (\d+)/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    proc.on('exit', (code) => reject(new Error(`server exited with ${code}: ${out}`)));
  });
  proc.stdout.on('data', (d) => { out += d; });
  const exited = new Promise((r) => proc.on('exit', (code, sig) => r({ code, sig })));
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    proc,
    output: () => out,
    exited,
    async stop() {
      proc.kill('SIGTERM');
      return exited;
    },
  };
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

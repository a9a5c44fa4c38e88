// API keys (Bearer header, api_key query parameter on /v1/ws, public routes) and TLS (HTTPS + WSS with a
// throwaway self-signed certificate made by the openssl CLI).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { check, eq, finish, requireNpm, startServer } from './server.mjs';

const WebSocket = requireNpm('ws');

function wsResult(url, opts = {}) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, opts);
    ws.on('open', () => ws.send(JSON.stringify({ type: 'generate', id: 'a', prompt: 'x', max_tokens: 2 })));
    ws.on('message', (d) => {
      const f = JSON.parse(d.toString());
      if (f.type === 'done') { ws.close(); resolve({ ok: true, done: f }); }
    });
    ws.on('unexpected-response', (req, res) => resolve({ ok: false, status: res.statusCode }));
    ws.on('error', (e) => resolve({ ok: false, error: String(e) }));
  });
}

const KEY = 'sk-test-123';
const srv = await startServer(['--api-key', KEY, '--api-key', 'second-key']);
try {
  const get = (p, headers = {}) => fetch(srv.url + p, { headers });
  eq((await get('/health')).status, 200, '/health is public');
  eq((await get('/ready')).status, 200, '/ready is public');
  eq((await get('/metrics')).status, 200, '/metrics is public');
  const denied = await get('/v1/models');
  eq(denied.status, 401, 'no key 401');
  eq(denied.headers.get('www-authenticate'), 'Bearer', 'WWW-Authenticate');
  const body = await denied.json();
  eq(body.error.type, 'authentication_error', '401 error shape');
  eq((await get('/version')).status, 401, '/version is not public by default');
  eq((await get('/v1/models', { authorization: 'Bearer wrong' })).status, 401, 'wrong key 401');
  eq((await get('/v1/models', { authorization: `Bearer ${KEY}x` })).status, 401, 'longer key 401');
  eq((await get('/v1/models', { authorization: `Bearer ${KEY}` })).status, 200, 'right key 200');
  eq((await get('/v1/models', { authorization: 'Bearer second-key' })).status, 200, 'second key 200');
  eq((await get('/v1/models', { authorization: `Basic ${KEY}` })).status, 401, 'not a Bearer header');
  const post = await fetch(srv.url + '/v1/completions', { method: 'POST', body: '{"prompt":"x","max_tokens":2}', headers: { 'content-type': 'application/json' } });
  eq(post.status, 401, 'POST without key 401 (body never read)');
  eq((await wsResult(`ws://127.0.0.1:${srv.port}/v1/ws`)).status, 401, 'ws without key 401');
  eq((await wsResult(`ws://127.0.0.1:${srv.port}/v1/ws?api_key=nope`)).status, 401, 'ws with a wrong key 401');
  check((await wsResult(`ws://127.0.0.1:${srv.port}/v1/ws?api_key=${KEY}`)).ok, 'ws with ?api_key= works');
  check((await wsResult(`ws://127.0.0.1:${srv.port}/v1/ws`, { headers: { authorization: `Bearer ${KEY}` } })).ok, 'ws with a Bearer header works');
} finally {
  await srv.stop();
}

// Configured public routes replace the defaults
const pub = await startServer(['--api-key', KEY, '--public', '/version']);
try {
  eq((await fetch(pub.url + '/version')).status, 200, 'configured public route');
  eq((await fetch(pub.url + '/metrics')).status, 401, 'defaults replaced');
} finally {
  await pub.stop();
}

// TLS
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-tls-'));
const cert = path.join(dir, 'cert.pem'), key = path.join(dir, 'key.pem');
execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
  '-subj', '/CN=127.0.0.1'], { stdio: 'ignore' });
const tls = await startServer(['--tls-cert', cert, '--tls-key', key, '--step-ms', '2']);
try {
  const agent = new https.Agent({ rejectUnauthorized: false });
  const req = (p, body) => new Promise((resolve, reject) => {
    const r = https.request({ host: '127.0.0.1', port: tls.port, path: p, method: body ? 'POST' : 'GET', agent,
      headers: body ? { 'content-type': 'application/json' } : {} }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, data }));
    });
    r.on('error', reject);
    r.end(body);
  });
  eq((await req('/health')).status, 200, 'HTTPS /health');
  const c = await req('/v1/completions', '{"prompt":"x","max_tokens":3}');
  eq(JSON.parse(c.data).choices[0].text, 'the', 'HTTPS completion');
  const s = await req('/v1/completions', '{"prompt":"x","max_tokens":3,"stream":true}');
  check(s.data.endsWith('data: [DONE]\n\n'), 'HTTPS SSE stream', s.data);
  const w = await wsResult(`wss://127.0.0.1:${tls.port}/v1/ws`, { rejectUnauthorized: false });
  check(w.ok && w.done.usage.completion_tokens === 2, 'WSS generate', w);
  const plain = await fetch(`http://127.0.0.1:${tls.port}/health`).then((r) => r.status, () => 'refused');
  check(plain !== 200, 'plain HTTP on the TLS port does not work', plain);
} finally {
  await tls.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}
finish('auth_tls');

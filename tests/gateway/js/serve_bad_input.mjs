// Bad input against the real `troupe serve`, each answered with the right status and an OpenAI-shaped
// error, while two other clients' streams (SSE and WebSocket, greedy) keep going: afterwards their text
// must equal the same request's greedy output on a quiet server, and nothing is left running.
import net from 'node:net';
import { check, connectWs, eq, finish, metrics, readSSE, sleep, startTroupe } from './server.mjs';

async function post(url, body, { path = '/v1/completions', headers = {}, method = 'POST' } = {}) {
  const res = await fetch(url + path, { method, body, headers: { 'content-type': 'application/json', ...headers } });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (e) { /* not JSON */ }
  return { status: res.status, json, headers: res.headers, text };
}

function isOpenAIError(r) {
  const e = r.json?.error;
  return e && typeof e.message === 'string' && typeof e.type === 'string' && 'param' in e && 'code' in e;
}

// Raw socket: send `data`, report what came back.
function raw(port, data, { waitMs = 3000 } = {}) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.on('connect', () => { if (data) s.write(data); });
    s.on('data', (d) => { got += d; });
    const done = (closed) => { s.destroy(); resolve({ got, closed }); };
    s.on('close', () => done(true));
    s.on('error', () => {});
    setTimeout(() => done(false), waitMs);
  });
}

const MAX_BODY = 1 << 20;
const srv = await startTroupe(['--max-body-bytes', String(MAX_BODY)]);
try {
  const bystanderBody = { prompt: 'A long story:', max_tokens: 400, temperature: 0, ignore_eos: true };
  // The bystanders: a long SSE stream and a long WebSocket stream that must come through intact
  const bystanderRes = await fetch(srv.url + '/v1/completions', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...bystanderBody, stream: true, stream_options: { include_usage: true } }),
  });
  eq(bystanderRes.status, 200, 'bystander accepted');
  let bystanderChunks = 0;
  const bystander = readSSE(bystanderRes, () => { bystanderChunks++; });
  const ws = connectWs(`ws://127.0.0.1:${srv.port}/v1/ws`);
  await ws.opened;
  ws.send({ type: 'generate', id: 'w', ...bystanderBody });
  await ws.waitFor((f) => f.type === 'token' && f.id === 'w', 30000);
  for (let i = 0; i < 500 && bystanderChunks < 3; i++) await sleep(10);

  const longPrompt = JSON.stringify({ prompt: Array.from({ length: 2100 }, (_, i) => 4 + (i % 1000)) });
  const cases = [
    ['malformed JSON', '{"prompt": "x",', 400],
    ['not an object', '[1,2]', 400],
    ['NaN literal', '{"prompt":"x","temperature":NaN}', 400],
    ['number overflow', '{"prompt":"x","temperature":1e999}', 400],
    ['invalid UTF-8', Buffer.from('{"prompt":"\xff\xfe"}', 'latin1'), 400],
    ['missing prompt', '{"max_tokens":3}', 400],
    ['prompt wrong type', '{"prompt":{"a":1}}', 400, 'prompt'],
    ['max_tokens wrong type', '{"prompt":"x","max_tokens":"3"}', 400, 'max_tokens'],
    ['max_tokens float', '{"prompt":"x","max_tokens":2.5}', 400, 'max_tokens'],
    ['max_tokens = 0', '{"prompt":"x","max_tokens":0}', 400, 'max_tokens'],
    ['max_tokens negative', '{"prompt":"x","max_tokens":-4}', 400, 'max_tokens'],
    ['max_tokens overflow', '{"prompt":"x","max_tokens":1e30}', 400],
    ['temperature < 0', '{"prompt":"x","temperature":-0.1}', 400, 'temperature'],
    ['top_p > 1', '{"prompt":"x","top_p":1.01}', 400, 'top_p'],
    ['top_k < -1', '{"prompt":"x","top_k":-5}', 400, 'top_k'],
    ['n = 0', '{"prompt":"x","n":0}', 400, 'n'],
    ['n huge', '{"prompt":"x","n":100000}', 400, 'n'],
    ['logprobs > 20', '{"prompt":"x","logprobs":21}', 400, 'logprobs'],
    ['seed wrong type', '{"prompt":"x","seed":"7"}', 400, 'seed'],
    ['too many stops', '{"prompt":"x","stop":["a","b","c","d","e"]}', 400, 'stop'],
    ['token id = vocab size', '{"prompt":[1,2,1024]}', 400, 'prompt'],
    ['negative token id', '{"prompt":[-1]}', 400, 'prompt'],
    ['stop_token_ids outside vocab', '{"prompt":"x","stop_token_ids":[1024]}', 400, 'stop_token_ids'],
    ['prompt + max_tokens over the context', '{"prompt":"x","max_tokens":2048}', 400, 'max_tokens'],
    ['prompt longer than the context', longPrompt, 400],
    ['several prompts', '{"prompt":["a","b"]}', 400],
    ['echo refused', '{"prompt":"x","echo":true}', 400],
    ['stream_options without stream', '{"prompt":"x","stream_options":{"include_usage":true}}', 400, 'stream_options'],
    ['unknown model', '{"model":"gpt-9","prompt":"x"}', 404, 'model'],
    ['chat: no messages', '{"messages":[]}', 400, 'messages', '/v1/chat/completions'],
    ['chat: bad message', '{"messages":[{"content":"x"}]}', 400, 'messages', '/v1/chat/completions'],
    ['chat: over the context', '{"messages":[{"role":"user","content":"x"}],"max_tokens":2048}', 400, null, '/v1/chat/completions'],
    ['chat: top_logprobs without logprobs', '{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}', 400,
     'top_logprobs', '/v1/chat/completions'],
  ];
  const results = await Promise.all(cases.map(([, body, , , path]) => post(srv.url, body, { path })));
  cases.forEach(([what, , status, param], i) => {
    const r = results[i];
    eq(r.status, status, `${what}: status`);
    check(isOpenAIError(r), `${what}: OpenAI error shape`, r.text);
    if (param) eq(r.json?.error?.param, param, `${what}: param`);
  });

  // Huge bodies: 413 from the Content-Length alone, and for a chunked body past the limit
  const big = await post(srv.url, JSON.stringify({ prompt: 'x'.repeat(MAX_BODY + 10) }));
  eq(big.status, 413, 'body over the limit 413');
  check(isOpenAIError(big), '413 error shape', big.text);
  const chunkPart = 'x'.repeat(64 * 1024);
  let chunked = 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n';
  for (let i = 0; i < 20; i++) chunked += chunkPart.length.toString(16) + '\r\n' + chunkPart + '\r\n';
  const rc = await raw(srv.port, chunked);
  check(rc.got.startsWith('HTTP/1.1 413'), 'chunked body over the limit 413', rc.got.slice(0, 40));
  // Malformed HTTP, wrong routes and methods
  const garbage = await raw(srv.port, 'NOT HTTP AT ALL\r\n\r\n');
  check(garbage.got.startsWith('HTTP/1.1 400'), 'garbage request line 400', garbage.got.slice(0, 40));
  eq((await post(srv.url, null, { path: '/v2/nothing', method: 'GET' })).status, 404, 'unknown route 404');
  eq((await post(srv.url, null, { path: '/v1/completions', method: 'GET' })).status, 405, 'GET on a POST route 405');

  // Bad frames on another socket: error frames, or a close, never harm to the bystanders
  const bad = connectWs(`ws://127.0.0.1:${srv.port}/v1/ws`);
  await bad.opened;
  bad.send('{not json');
  bad.send({ type: 'generate', id: 'b1', prompt_ids: [2000] });
  bad.send({ type: 'generate', id: 'b2', prompt: 'x', n: 0 });
  bad.send({ type: 'generate', prompt: 'x' });
  await bad.waitFor((f) => f.type === 'error' && f.error.code === 'invalid_id');
  eq(bad.frames.filter((f) => f.type === 'error').length, 4, 'four error frames');
  bad.ws.send(Buffer.from([1, 2, 3]));
  eq((await bad.closed).code, 1003, 'binary frame -> close 1003');

  // A valid request in the middle of all that is served normally
  const ok = await post(srv.url, JSON.stringify({ prompt: 'x', max_tokens: 4, ignore_eos: true }));
  eq([ok.status, ok.json?.usage?.completion_tokens], [200, 4], 'a valid request among the bad ones');

  const events = await bystander;
  const text = events.filter((e) => e !== '[DONE]').flatMap((e) => e.choices.map((c) => c.text)).join('');
  const usage = events.find((e) => e !== '[DONE]' && e.usage)?.usage;
  eq(events[events.length - 1], '[DONE]', 'the SSE bystander ends with [DONE]');
  eq(usage?.completion_tokens, 400, 'the SSE bystander got every token');
  const wsDone = await ws.waitFor((f) => f.type === 'done' && f.id === 'w', 60000);
  eq(wsDone.usage.completion_tokens, 400, 'the WebSocket bystander got every token');
  const wsText = ws.frames.filter((f) => f.type === 'token' && f.id === 'w').map((f) => f.text).join('');
  ws.ws.close();
  // The same request on a quiet server: the bystanders' text is unchanged
  const quiet = await post(srv.url, JSON.stringify(bystanderBody));
  eq(text, quiet.json?.choices?.[0]?.text, 'the SSE bystander text is the quiet greedy text');
  eq(wsText, quiet.json?.choices?.[0]?.text, 'the WebSocket bystander text is the quiet greedy text');

  let m = await metrics(srv.url);
  for (let i = 0; i < 250 && (m.troupe_requests_running !== 0 || m.troupe_websocket_connections !== 0); i++) {
    await sleep(20);
    m = await metrics(srv.url);
  }
  eq(m.troupe_requests_running, 0, 'nothing left running');
  eq(m.troupe_requests_waiting, 0, 'nothing left waiting');
  eq(m.troupe_kv_cache_usage_ratio, 0, 'no KV blocks in use');
  eq(m['troupe_requests_total{finish_reason="abort"}'] ?? 0, 0, 'nothing aborted');
  eq((await fetch(srv.url + '/health')).status, 200, '/health 200');
} finally {
  const { code } = await srv.stop();
  eq(code, 0, 'troupe serve exits 0 on SIGTERM');
}

// Queue full: with one running and one waiting slot, a third concurrent request gets 429 + Retry-After
// and the admitted two finish whole.
const full = await startTroupe(['--max-num-seqs', '1', '--max-waiting-requests', '1']);
try {
  const body = JSON.stringify({ prompt: 'x', max_tokens: 300, ignore_eos: true });
  const first = post(full.url, body);
  let m = await metrics(full.url);
  for (let i = 0; i < 250 && m.troupe_requests_running !== 1; i++) { await sleep(10); m = await metrics(full.url); }
  const second = post(full.url, body);
  for (let i = 0; i < 250 && m.troupe_requests_waiting !== 1; i++) { await sleep(10); m = await metrics(full.url); }
  const r = await post(full.url, JSON.stringify({ prompt: 'x', max_tokens: 3 }));
  eq(r.status, 429, 'queue full 429');
  check(Number(r.headers.get('retry-after')) >= 1, 'Retry-After header', r.headers.get('retry-after'));
  eq(r.json?.error?.code, 'queue_full', 'queue_full code');
  eq(r.json?.error?.type, 'rate_limit_error', 'queue_full type');
  const done = await Promise.all([first, second]);
  eq(done.map((d) => [d.status, d.json?.usage?.completion_tokens]), [[200, 300], [200, 300]], 'the admitted requests finish');
  eq((await post(full.url, JSON.stringify({ prompt: 'x', max_tokens: 3 }))).status, 200, 'admitted again once the queue drains');
} finally {
  await full.stop();
}

// Draining: SIGTERM mid-stream; /ready and new work 503; the stream finishes; the process exits 0
const drain = await startTroupe();
{
  const res = await fetch(drain.url + '/v1/completions', {
    method: 'POST', headers: { 'content-type': 'application/json', connection: 'close' },
    body: JSON.stringify({ prompt: 'x', max_tokens: 400, ignore_eos: true, stream: true, stream_options: { include_usage: true } }),
  });
  let chunks = 0;
  const streamed = readSSE(res, () => { chunks++; });
  for (let i = 0; i < 500 && chunks < 3; i++) await sleep(10);
  drain.proc.kill('SIGTERM');
  await sleep(100);
  eq((await fetch(drain.url + '/ready')).status, 503, 'ready 503 while draining');
  const r = await post(drain.url, '{"prompt":"x"}');
  eq(r.status, 503, 'new work 503 while draining');
  eq(r.json?.error?.code, 'draining', 'draining code');
  const events = await streamed;
  eq(events[events.length - 1], '[DONE]', 'in-flight stream finished while draining');
  eq(events.find((e) => e !== '[DONE]' && e.usage)?.usage?.completion_tokens, 400, 'in-flight stream got every token');
  eq((await drain.exited).code, 0, 'troupe serve exits 0 after draining');
}
finish('serve_bad_input');

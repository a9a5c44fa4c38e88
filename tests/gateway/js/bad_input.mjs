// Bad input, each answered with the right status and OpenAI-shaped error while another client's stream
// keeps going; then queue-full (429 + Retry-After), loading (503) and draining (503, in-flight finishes).
import net from 'node:net';
import { check, eq, expectedText, finish, readSSE, sleep, startServer } from './server.mjs';

async function post(url, body, { path = '/v1/completions', headers = {}, method = 'POST' } = {}) {
  const res = await fetch(url + path, {
    method, body, headers: { 'content-type': 'application/json', ...headers },
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (e) { /* not JSON */ }
  return { status: res.status, json, headers: res.headers, text };
}

function isOpenAIError(r) {
  const e = r.json?.error;
  return e && typeof e.message === 'string' && typeof e.type === 'string' && 'param' in e && 'code' in e;
}

// Raw socket: send `data`, report what came back and whether/when the server closed.
function raw(port, data, { waitMs = 3000 } = {}) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    const start = Date.now();
    s.on('connect', () => { if (data) s.write(data); });
    s.on('data', (d) => { got += d; });
    const done = (closed) => { s.destroy(); resolve({ got, closed, ms: Date.now() - start }); };
    s.on('close', () => done(true));
    s.on('error', () => {});
    setTimeout(() => done(false), waitMs);
  });
}

const MAX_BODY = 1 << 20;
const srv = await startServer(['--step-ms', '3', '--max-body', String(MAX_BODY), '--header-timeout-ms', '800']);
try {
  // The bystander: a long stream that must come through intact
  const bystanderRes = await fetch(srv.url + '/v1/completions', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'x', max_tokens: 600, stream: true }),
  });
  const bystander = readSSE(bystanderRes);

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
    ['stream wrong type', '{"prompt":"x","stream":1}', 400, 'stream'],
    ['temperature < 0', '{"prompt":"x","temperature":-0.1}', 400, 'temperature'],
    ['temperature huge', '{"prompt":"x","temperature":1000}', 400, 'temperature'],
    ['top_p = 0', '{"prompt":"x","top_p":0}', 400, 'top_p'],
    ['top_p > 1', '{"prompt":"x","top_p":1.01}', 400, 'top_p'],
    ['top_k < -1', '{"prompt":"x","top_k":-5}', 400, 'top_k'],
    ['min_p > 1', '{"prompt":"x","min_p":1.5}', 400, 'min_p'],
    ['presence_penalty', '{"prompt":"x","presence_penalty":2.5}', 400, 'presence_penalty'],
    ['frequency_penalty', '{"prompt":"x","frequency_penalty":-2.5}', 400, 'frequency_penalty'],
    ['repetition_penalty', '{"prompt":"x","repetition_penalty":0}', 400, 'repetition_penalty'],
    ['n = 0', '{"prompt":"x","n":0}', 400, 'n'],
    ['n huge', '{"prompt":"x","n":100000}', 400, 'n'],
    ['logprobs > 20', '{"prompt":"x","logprobs":21}', 400, 'logprobs'],
    ['max_tokens = 0', '{"prompt":"x","max_tokens":0}', 400, 'max_tokens'],
    ['max_tokens overflow', '{"prompt":"x","max_tokens":1e30}', 400],
    ['seed wrong type', '{"prompt":"x","seed":"7"}', 400, 'seed'],
    ['too many stops', '{"prompt":"x","stop":["a","b","c","d","e"]}', 400, 'stop'],
    ['empty stop', '{"prompt":"x","stop":[""]}', 400],
    ['stop wrong type', '{"prompt":"x","stop":7}', 400, 'stop'],
    ['token id outside vocab', '{"prompt":[1,2,100000]}', 400, 'prompt'],
    ['negative token id', '{"prompt":[-1]}', 400, 'prompt'],
    ['stop_token_ids outside vocab', '{"prompt":"x","stop_token_ids":[4096]}', 400, 'stop_token_ids'],
    ['context overflow', '{"prompt":"x","max_tokens":4096}', 400, 'max_tokens'],
    ['prompt longer than context', JSON.stringify({ prompt: 'x'.repeat(5000) }), 400],
    ['stream_options without stream', '{"prompt":"x","stream_options":{"include_usage":true}}', 400, 'stream_options'],
    ['unknown model', '{"model":"gpt-9","prompt":"x"}', 404, 'model'],
    ['chat: no messages', '{"messages":[]}', 400, 'messages', '/v1/chat/completions'],
    ['chat: bad message', '{"messages":[{"content":"x"}]}', 400, 'messages', '/v1/chat/completions'],
    ['chat: top_logprobs without logprobs', '{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}', 400,
     'top_logprobs', '/v1/chat/completions'],
    ['chat: logprobs wrong type', '{"messages":[{"role":"user","content":"x"}],"logprobs":3}', 400, 'logprobs',
     '/v1/chat/completions'],
  ];
  const results = await Promise.all(cases.map(([, body, , , path]) => post(srv.url, body, { path })));
  cases.forEach(([what, , status, param], i) => {
    const r = results[i];
    eq(r.status, status, `${what}: status`);
    check(isOpenAIError(r), `${what}: OpenAI error shape`, r.text);
    if (param) eq(r.json?.error?.param, param, `${what}: param`);
  });

  // Routes and methods
  eq((await post(srv.url, null, { path: '/v2/nothing', method: 'GET' })).status, 404, 'unknown route 404');
  eq((await post(srv.url, null, { path: '/v1/completions', method: 'GET' })).status, 405, 'GET on a POST route 405');
  eq((await post(srv.url, '{}', { path: '/health' })).status, 405, 'POST on a GET route 405');

  // Huge bodies: 413 from the Content-Length alone, and for a chunked body past the limit
  const big = await post(srv.url, JSON.stringify({ prompt: 'x'.repeat(MAX_BODY + 10) }));
  eq(big.status, 413, 'body over the limit 413');
  check(isOpenAIError(big), '413 error shape', big.text);
  const chunkPart = 'x'.repeat(64 * 1024);
  let chunked = 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n';
  for (let i = 0; i < 20; i++) chunked += chunkPart.length.toString(16) + '\r\n' + chunkPart + '\r\n';
  const rc = await raw(srv.port, chunked);
  check(rc.got.startsWith('HTTP/1.1 413'), 'chunked body over the limit 413', rc.got.slice(0, 40));

  // Malformed HTTP and slow headers
  const garbage = await raw(srv.port, 'NOT HTTP AT ALL\r\n\r\n');
  check(garbage.got.startsWith('HTTP/1.1 400'), 'garbage request line 400', garbage.got.slice(0, 40));
  const slow = await raw(srv.port, 'GET /health HTTP/1.1\r\nHost: x\r\n', { waitMs: 4000 });
  check(slow.closed && slow.ms >= 700 && slow.ms < 3000, 'slow headers closed after the header timeout', slow);
  const idle = await raw(srv.port, '', { waitMs: 4000 });
  check(idle.closed && idle.ms < 3000, 'idle connection closed after the header timeout', idle);
  const hugeHeader = await raw(srv.port, 'GET /health HTTP/1.1\r\nX-Big: ' + 'a'.repeat(40000) + '\r\n\r\n');
  check(hugeHeader.got.startsWith('HTTP/1.1 431'), 'huge header 431', hugeHeader.got.slice(0, 40));

  // Keep-alive: two requests on one connection, the second one pipelined
  const two = await raw(srv.port, 'GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  check((two.got.match(/HTTP\/1.1 200/g) || []).length === 2 && two.got.includes('"version"'), 'pipelined keep-alive requests', two.got);

  const events = await bystander;
  const text = events.filter((e) => e !== '[DONE]').map((e) => e.choices.map((c) => c.text).join('')).join('');
  eq(text, expectedText(0, 0, 600), 'the bystander stream is intact');
  eq(events[events.length - 1], '[DONE]', 'the bystander stream ends with [DONE]');
} finally {
  await srv.stop();
}

// Queue full: 429 with Retry-After while the engine is at capacity
const full = await startServer(['--step-ms', '3', '--max-live', '2']);
try {
  const longs = [0, 1].map(() => post(full.url, '{"prompt":"x","max_tokens":300}'));
  await sleep(100);
  const r = await post(full.url, '{"prompt":"x","max_tokens":3}');
  eq(r.status, 429, 'queue full 429');
  eq(r.headers.get('retry-after'), '1', 'Retry-After header');
  eq(r.json?.error?.code, 'queue_full', 'queue_full code');
  const done = await Promise.all(longs);
  eq(done.map((d) => d.status), [200, 200], 'admitted requests finish');
} finally {
  await full.stop();
}

// Loading: 503 until the engine is set; /health is fine meanwhile
const loading = await startServer(['--load-delay-ms', '1000']);
try {
  eq((await fetch(loading.url + '/ready')).status, 503, 'ready 503 while loading');
  eq((await fetch(loading.url + '/health')).status, 200, 'health 200 while loading');
  const r = await post(loading.url, '{"prompt":"x"}');
  eq(r.status, 503, 'completions 503 while loading');
  eq(r.json?.error?.code, 'unavailable', 'loading code');
  await sleep(1300);
  eq((await fetch(loading.url + '/ready')).status, 200, 'ready 200 once loaded');
} finally {
  await loading.stop();
}

// Draining: SIGTERM mid-stream; readiness and new work 503; the stream finishes; the process exits 0
const drain = await startServer(['--step-ms', '5']);
{
  const res = await fetch(drain.url + '/v1/completions', {
    method: 'POST', headers: { 'content-type': 'application/json', connection: 'close' },
    body: JSON.stringify({ prompt: 'x', max_tokens: 200, stream: true }),
  });
  const streamed = readSSE(res);
  await sleep(100);
  drain.proc.kill('SIGTERM');
  await sleep(100);
  eq((await fetch(drain.url + '/ready')).status, 503, 'ready 503 while draining');
  const r = await post(drain.url, '{"prompt":"x"}');
  eq(r.status, 503, 'new work 503 while draining');
  eq(r.json?.error?.code, 'draining', 'draining code');
  const events = await streamed;
  eq(events[events.length - 1], '[DONE]', 'in-flight stream finished while draining');
  eq((await drain.exited).code, 0, 'server exits 0 after draining');
}
finish('bad_input');

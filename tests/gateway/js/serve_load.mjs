// The load test on loopback: TROUPE_LOAD_CLIENTS (default 200) concurrent streaming clients for
// TROUPE_LOAD_SECONDS (default 60) against the real `troupe serve` on the CPU worker. Most stream SSE
// over keep-alive connections, every tenth a WebSocket; short prompts (half share a 3-block prefix, so the
// prefix cache works), max_tokens 8..24, ignore_eos so each must finish by length. Zero errors allowed:
// every stream complete, [DONE], usage right, and the greedy clients' text equal to the quiet server's.
// Afterwards, at idle: nothing running or waiting, no KV block in use (cached prefix blocks are evictable,
// core/kv/block_pool.h), /health 200, and the engine's counters equal what the clients saw.
// Prints requests/s, tokens/s, and p50/p99 latency and time to first token.
import fs from 'node:fs';
import os from 'node:os';
import { check, connectWs, eq, finish, metrics, readSSE, sleep, startTroupe } from './server.mjs';

const CLIENTS = Number(process.env.TROUPE_LOAD_CLIENTS || 200);
const SECONDS = Number(process.env.TROUPE_LOAD_SECONDS || 60);
const srv = await startTroupe(['--max-num-seqs', '256', '--max-waiting-requests', String(4 * CLIENTS)]);
const SHARED = 'You are a helpful assistant. Answer briefly and precisely, in plain words, without lists or code. ' +
               'The question follows after this line. ';
const GREEDY_PROMPTS = ['Tell me a story', 'What is two plus two?', SHARED + 'Why is the sky blue?'];
const latencies = [], ttfts = [];
let requests = 0, tokens = 0, errors = 0, sseRequests = 0, wsRequests = 0, greedyChecked = 0;
const firstErrors = [];
const fail = (e) => { errors++; if (firstErrors.length < 8) firstErrors.push(String(e)); };

function requestFor(c, k, greedyRef) {
  const maxTokens = 8 + ((c * 7 + k * 3) % 17);  // 8..24
  if (c % 4 === 0) {
    const p = (c / 4 + k) % GREEDY_PROMPTS.length;
    return { body: { prompt: GREEDY_PROMPTS[p], max_tokens: 16, temperature: 0, ignore_eos: true }, want: greedyRef[p] };
  }
  const prompt = (c % 2 ? SHARED : '') + `client ${c} request ${k}`;
  return { body: { prompt, max_tokens: maxTokens, temperature: 1, seed: c * 1000 + k, ignore_eos: true } };
}

async function sseClient(c, deadline, greedyRef) {
  for (let k = 0; Date.now() < deadline; k++) {
    const { body, want } = requestFor(c, k, greedyRef);
    const t0 = performance.now();
    let t1 = 0;
    try {
      const res = await fetch(srv.url + '/v1/completions', {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
      });
      if (res.status !== 200) throw new Error(`client ${c}: status ${res.status}: ${await res.text()}`);
      const events = await readSSE(res, (ev) => { if (!t1 && ev !== '[DONE]' && ev.choices?.length) t1 = performance.now(); });
      const t2 = performance.now();
      const chunks = events.filter((e) => e !== '[DONE]');
      const text = chunks.flatMap((e) => e.choices.map((ch) => ch.text)).join('');
      const finishes = chunks.flatMap((e) => e.choices.filter((ch) => ch.finish_reason).map((ch) => ch.finish_reason));
      const usage = chunks.find((e) => e.usage)?.usage;
      if (events[events.length - 1] !== '[DONE]') throw new Error(`client ${c}: no [DONE]`);
      if (chunks.some((e) => e.error)) throw new Error(`client ${c}: error event ${JSON.stringify(chunks.find((e) => e.error))}`);
      if (new Set(chunks.map((e) => e.id)).size !== 1) throw new Error(`client ${c}: several ids in one stream`);
      if (JSON.stringify(finishes) !== '["length"]') throw new Error(`client ${c}: finish reasons ${JSON.stringify(finishes)}`);
      if (usage?.completion_tokens !== body.max_tokens || !(usage.prompt_tokens > 0) ||
          usage.total_tokens !== usage.prompt_tokens + usage.completion_tokens) {
        throw new Error(`client ${c}: usage ${JSON.stringify(usage)} for max_tokens ${body.max_tokens}`);
      }
      if (want !== undefined) {
        if (text !== want) throw new Error(`client ${c}: greedy text ${JSON.stringify(text)} != ${JSON.stringify(want)}`);
        greedyChecked++;
      }
      requests++;
      sseRequests++;
      tokens += usage.completion_tokens;
      latencies.push(t2 - t0);
      ttfts.push(t1 - t0);
    } catch (e) {
      fail(e);
    }
  }
}

async function wsClient(c, deadline, greedyRef) {
  const s = connectWs(`ws://127.0.0.1:${srv.port}/v1/ws`);
  try {
    await s.opened;
  } catch (e) {
    return fail(`client ${c}: websocket: ${e}`);
  }
  for (let k = 0; Date.now() < deadline; k++) {
    const { body, want } = requestFor(c, k, greedyRef);
    const id = `r${k}`;
    const t0 = performance.now();
    let t1 = 0;
    try {
      const first = s.waitFor((f) => f.id === id && (f.type === 'token' || f.type === 'error'), 60000).then(() => { t1 = performance.now(); });
      s.send({ type: 'generate', id, ...body });
      const done = await s.waitFor((f) => f.id === id && (f.type === 'done' || f.type === 'error'), 60000);
      await first;
      const t2 = performance.now();
      if (done.type === 'error') throw new Error(`client ${c}: error frame ${JSON.stringify(done.error)}`);
      const toks = s.frames.filter((f) => f.type === 'token' && f.id === id);
      const text = toks.map((f) => f.text).join('');
      const nids = toks.reduce((a, f) => a + f.token_ids.length, 0);
      if (done.finish_reason !== 'length' || done.usage.completion_tokens !== body.max_tokens || nids !== body.max_tokens) {
        throw new Error(`client ${c}: done ${JSON.stringify(done)} with ${nids} token ids for max_tokens ${body.max_tokens}`);
      }
      if (want !== undefined) {
        if (text !== want) throw new Error(`client ${c}: ws greedy text ${JSON.stringify(text)} != ${JSON.stringify(want)}`);
        greedyChecked++;
      }
      // Forget this id's frames so the socket's list stays short over a long run
      for (let i = s.frames.length - 1; i >= 0; i--) if (s.frames[i].id === id) s.frames.splice(i, 1);
      requests++;
      wsRequests++;
      tokens += done.usage.completion_tokens;
      latencies.push(t2 - t0);
      ttfts.push(t1 - t0);
    } catch (e) {
      fail(e);
    }
  }
  s.ws.close();
}

try {
  // The greedy references, on the quiet server
  const greedyRef = [];
  for (const prompt of GREEDY_PROMPTS) {
    const r = await (await fetch(srv.url + '/v1/completions', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt, max_tokens: 16, temperature: 0, ignore_eos: true }),
    })).json();
    greedyRef.push(r.choices[0].text);
  }
  const base = await metrics(srv.url);
  const rss = () => Number(fs.readFileSync(`/proc/${srv.proc.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)?.[1] ?? 0) / 1024;
  const rssBefore = rss();

  const start = performance.now();
  const deadline = Date.now() + SECONDS * 1000;
  const wsClients = Array.from({ length: CLIENTS }, (_, c) => c).filter((c) => c % 10 === 9).length;
  await Promise.all(Array.from({ length: CLIENTS }, (_, c) => (c % 10 === 9 ? wsClient : sseClient)(c, deadline, greedyRef)));
  const secs = (performance.now() - start) / 1000;

  const pct = (xs, p) => {
    const v = [...xs].sort((a, b) => a - b);
    return v.length ? v[Math.min(v.length - 1, Math.floor(p * v.length))].toFixed(1) : 'n/a';
  };
  console.log(`serve_load: ${CLIENTS} clients (${CLIENTS - wsClients} SSE + ${wsClients} WebSocket), ${secs.toFixed(1)} s, ` +
              `troupe serve on the CPU worker (models/default): ${requests} requests (${(requests / secs).toFixed(1)} req/s; ` +
              `${sseRequests} SSE, ${wsRequests} ws), ${tokens} tokens (${(tokens / secs).toFixed(0)} tok/s), ` +
              `latency p50 ${pct(latencies, 0.5)} ms p99 ${pct(latencies, 0.99)} ms, ` +
              `TTFT p50 ${pct(ttfts, 0.5)} ms p99 ${pct(ttfts, 0.99)} ms, ${errors} errors ` +
              `(server RSS ${rssBefore.toFixed(0)} -> ${rss().toFixed(0)} MiB; load average ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} cores)`);
  eq(errors, 0, 'no errors under load', firstErrors);
  check(requests >= CLIENTS, 'every client completed requests', requests);
  check(greedyChecked > 0, 'greedy clients checked their text', greedyChecked);

  // At idle: nothing running or waiting, no KV in use, healthy, counters agree with the clients
  let m = await metrics(srv.url);
  for (let i = 0; i < 500 && (m.troupe_requests_running !== 0 || m.troupe_requests_waiting !== 0 ||
                              m.troupe_websocket_connections !== 0); i++) {
    await sleep(20);
    m = await metrics(srv.url);
  }
  const d = (k) => (m[k] ?? 0) - (base[k] ?? 0);
  eq(m.troupe_requests_running, 0, 'troupe_requests_running 0 at idle (no leaked requests)');
  eq(m.troupe_requests_waiting, 0, 'troupe_requests_waiting 0 at idle');
  eq(m.troupe_kv_cache_usage_ratio, 0, 'troupe_kv_cache_usage_ratio 0 at idle (no leaked KV blocks)');
  eq(m.troupe_websocket_connections, 0, 'no websocket left open');
  eq((await fetch(srv.url + '/health')).status, 200, '/health 200 after the load');
  eq((await fetch(srv.url + '/ready')).status, 200, '/ready 200 after the load');
  eq(d('troupe_requests_total{finish_reason="length"}'), requests, 'every request finished by length in the engine');
  eq(d('troupe_requests_total{finish_reason="abort"}'), 0, 'nothing aborted');
  eq(d('troupe_requests_total{finish_reason="error"}'), 0, 'no engine errors');
  eq(d('troupe_generation_tokens_total'), tokens, 'troupe_generation_tokens_total == the tokens the clients got');
  check(d('troupe_prefix_cache_hits_total') > 0, 'the shared prefix hit the prefix cache', d('troupe_prefix_cache_hits_total'));
  const after = await (await fetch(srv.url + '/v1/completions', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: GREEDY_PROMPTS[0], max_tokens: 16, temperature: 0, ignore_eos: true }),
  })).json();
  eq(after.choices?.[0]?.text, greedyRef[0], 'the server still answers the same after the load');
} finally {
  const { code } = await srv.stop();
  eq(code, 0, 'troupe serve exits 0 on SIGTERM');
}
finish('serve_load');

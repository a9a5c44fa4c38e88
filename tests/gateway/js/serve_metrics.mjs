// /metrics of the real `troupe serve` after mixed traffic (completions and chat, streamed and not, n > 1,
// stop strings, EOS, WebSocket with a cancel, refused requests): promtool check metrics finds nothing, and
// the engine's counters agree exactly with what the clients saw.
import { execFileSync } from 'node:child_process';
import { check, connectWs, eq, finish, metrics, parseMetrics, readSSE, sleep, startTroupe } from './server.mjs';

const promtool = process.env.PROMTOOL || '/usr/bin/promtool';
const srv = await startTroupe();
try {
  const base = await metrics(srv.url);
  let completionTokens = 0, promptTokens = 0, requests = 0;
  const reasons = { length: 0, stop: 0, abort: 0 };
  // Each finished sequence is one count of troupe_requests_total{finish_reason} (core/sched/output_processor.cpp).
  const saw = (usage, finishReasons) => {
    completionTokens += usage.completion_tokens;
    promptTokens += usage.prompt_tokens;
    requests++;
    for (const r of finishReasons) reasons[r === 'cancelled' ? 'abort' : r]++;
  };
  const post = (body, path = '/v1/completions') => fetch(srv.url + path, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });

  // Completions, not streamed
  for (let i = 0; i < 4; i++) {
    const r = await (await post({ prompt: `metrics ${i}`, max_tokens: 3 + i, ignore_eos: true })).json();
    saw(r.usage, r.choices.map((c) => c.finish_reason));
  }
  // n > 1
  const n = await (await post({ prompt: 'abc', max_tokens: 5, n: 3, ignore_eos: true })).json();
  saw(n.usage, n.choices.map((c) => c.finish_reason));
  // A stop string taken from the greedy text
  const g = await (await post({ prompt: 'abc', max_tokens: 24, temperature: 0, ignore_eos: true })).json();
  saw(g.usage, g.choices.map((c) => c.finish_reason));
  const gt = g.choices[0].text;
  let stop = '';
  for (let i = Math.min(10, gt.length - 2); i + 2 <= gt.length && !stop; i++) if (!gt.slice(i, i + 2).includes('\ufffd')) stop = gt.slice(i, i + 2);
  const s = await (await post({ prompt: 'abc', max_tokens: 24, temperature: 0, ignore_eos: true, stop })).json();
  saw(s.usage, s.choices.map((c) => c.finish_reason));
  check(stop.length > 0 && s.choices[0].finish_reason === 'stop', 'one request finished by a stop string', [stop, s.choices[0]]);
  // EOS at a very high temperature (see serve_openai.mjs): some of the 8 choices stop
  const hot = await (await post({ prompt: 'x', max_tokens: 600, temperature: 100, seed: 7, n: 8 })).json();
  saw(hot.usage, hot.choices.map((c) => c.finish_reason));
  // Streamed, with usage
  const ev = await readSSE(await post({ prompt: 'ab', max_tokens: 9, ignore_eos: true, stream: true, stream_options: { include_usage: true } }));
  const usage = ev.find((e) => e !== '[DONE]' && e.usage)?.usage;
  saw(usage, ev.filter((e) => e !== '[DONE]').flatMap((e) => e.choices.filter((c) => c.finish_reason).map((c) => c.finish_reason)));
  // Chat, streamed and not
  const chat = await (await post({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 6, ignore_eos: true }, '/v1/chat/completions')).json();
  saw(chat.usage, chat.choices.map((c) => c.finish_reason));
  const cev = await readSSE(await post({
    messages: [{ role: 'user', content: 'hi' }], max_tokens: 7, n: 2, ignore_eos: true, stream: true, stream_options: { include_usage: true },
  }, '/v1/chat/completions'));
  saw(cev.find((e) => e !== '[DONE]' && e.usage).usage,
      cev.filter((e) => e !== '[DONE]').flatMap((e) => e.choices.filter((c) => c.finish_reason).map((c) => c.finish_reason)));
  // WebSocket: one that finishes, one cancelled mid-stream (its done frame tells the tokens it got)
  const ws = connectWs(`ws://127.0.0.1:${srv.port}/v1/ws`);
  await ws.opened;
  ws.send({ type: 'generate', id: 'w1', prompt: 'hello', max_tokens: 5, ignore_eos: true });
  ws.send({ type: 'generate', id: 'w2', prompt: 'hello there', max_tokens: 1500, ignore_eos: true });
  await ws.waitFor((f) => f.type === 'token' && f.id === 'w2', 30000);
  ws.send({ type: 'cancel', id: 'w2' });
  for (const id of ['w1', 'w2']) {
    const d = await ws.waitFor((f) => f.type === 'done' && f.id === id, 30000);
    saw(d.usage, [d.finish_reason]);
  }
  ws.ws.close();
  check(reasons.abort === 1 && reasons.stop >= 2, 'the traffic has cancelled and stopped sequences', reasons);
  // Refused requests count nothing in the engine
  eq((await post({ prompt: 'x', top_p: 7 })).status, 400, 'a validation error');
  eq((await post({ prompt: 'x', max_tokens: 2048 })).status, 400, 'a context overflow');
  eq((await fetch(srv.url + '/nowhere')).status, 404, 'a 404');

  // Wait for the server to settle (the websocket's close), then read it all once
  let text = '';
  let m = {};
  for (let i = 0; i < 250; i++) {
    const res = await fetch(srv.url + '/metrics');
    if (i === 0) check(/^text\/plain; version=0\.0\.4/.test(res.headers.get('content-type')), 'exposition content type');
    text = await res.text();
    m = parseMetrics(text);
    if (m.troupe_requests_running === 0 && m.troupe_websocket_connections === 0) break;
    await sleep(20);
  }
  let lint = '';
  try {
    lint = execFileSync(promtool, ['check', 'metrics'], { input: text, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (e) {
    lint = `exit ${e.status}: ${e.stdout}${e.stderr}`;
  }
  eq(lint.trim(), '', 'promtool check metrics finds nothing');

  const d = (k) => (m[k] ?? 0) - (base[k] ?? 0);
  eq(d('troupe_generation_tokens_total'), completionTokens, 'troupe_generation_tokens_total == the completion tokens the clients saw');
  check(d('troupe_prompt_tokens_total') >= promptTokens, 'troupe_prompt_tokens_total >= the prompt tokens the clients saw',
        [d('troupe_prompt_tokens_total'), promptTokens]);
  eq(d('troupe_prompt_tokens_total'), promptTokens, 'troupe_prompt_tokens_total == the prompt tokens the clients saw (no refused one counted)');
  for (const r of ['length', 'stop', 'abort']) {
    eq(d(`troupe_requests_total{finish_reason="${r}"}`), reasons[r], `troupe_requests_total{finish_reason="${r}"} == the sequences that finished so`);
  }
  eq(d('troupe_requests_total{finish_reason="error"}'), 0, 'no engine errors');
  for (const h of ['troupe_e2e_request_latency_seconds', 'troupe_time_to_first_token_seconds', 'troupe_request_queue_time_seconds']) {
    eq(d(`${h}_count`), requests, `${h}: one observation per request`);
  }
  check(d('troupe_step_duration_seconds_count') > 0, 'engine steps observed');
  check(d('troupe_prefix_cache_queries_total') >= 0 && d('troupe_prefix_cache_hits_total') <= d('troupe_prefix_cache_queries_total'),
        'prefix cache hits <= queries');
  eq(d('troupe_http_requests_total{route="/v1/completions",status="200"}'), 9, 'completions answered 200');
  eq(d('troupe_http_requests_total{route="/v1/chat/completions",status="200"}'), 2, 'chat answered 200');
  eq(d('troupe_http_requests_total{route="/v1/completions",status="400"}'), 2, 'the 400s counted');
  eq(d('troupe_http_requests_total{route="other",status="404"}'), 1, 'unknown routes share one label');
  eq(m.troupe_requests_running, 0, 'troupe_requests_running 0 at idle');
  eq(m.troupe_requests_waiting, 0, 'troupe_requests_waiting 0 at idle');
  eq(m.troupe_kv_cache_usage_ratio, 0, 'troupe_kv_cache_usage_ratio 0 at idle (cached prefixes are evictable)');
  eq(m.troupe_websocket_connections, 0, 'no websocket left open');
  const build = Object.keys(m).find((k) => k.startsWith('troupe_build_info{'));
  check(build && m[build] === 1, 'build info', build);
} finally {
  const { code } = await srv.stop();
  eq(code, 0, 'troupe serve exits 0 on SIGTERM');
}
finish('serve_metrics');

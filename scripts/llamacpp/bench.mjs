// llama-bench's pp/tg measurement through llama.cpp as node-llama-cpp ships it
// (prebuilt CPU backends; ggml picks the best variant for this CPU at load).
//   node bench.mjs MODEL [--pp 512] [--tg 64] [--reps 2] [--threads 2] [--fa]
// pp: one batch of `pp` tokens into an empty context (n_batch = n_ubatch = pp);
// tg: `tg` single-token decodes into an empty context, no sampling. One
// warm-up run of each precedes the timed repetitions, as llama-bench does.
// Tokens are fixed ids (the speed does not depend on them).
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const args = process.argv.slice(2);
const opt = {pp: 512, tg: 64, reps: 2, threads: 2, fa: false};
let modelPath = null;
for (let i = 0; i < args.length; ++i) {
  const a = args[i];
  if (a === "--fa") { opt.fa = true; continue; }
  const key = a.replace(/^--/, "");
  if (a.startsWith("--") && key in opt) {
    const v = Number(args[++i]);
    if (!Number.isInteger(v) || v < 0) { console.error(`bench.mjs: ${a} needs a non-negative integer`); process.exit(2); }
    opt[key] = v;
  } else if (!modelPath && !a.startsWith("-")) modelPath = a;
  else { console.error(`bench.mjs: unknown argument ${a}`); process.exit(2); }
}
if (!modelPath || opt.reps < 1 || opt.threads < 1) {
  console.error("usage: node bench.mjs MODEL [--pp 512] [--tg 64] [--reps 2] [--threads 2] [--fa]");
  process.exit(2);
}

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const ctx = await model.createContext({
  contextSize: Math.max(opt.pp, opt.tg) + 16, batchSize: Math.max(opt.pp, 1), threads: opt.threads,
  flashAttention: opt.fa, batching: {dispatchSchedule: "nextTick"}});
const vocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
const ids = n => Array.from({length: n}, (_, i) => (i * 7919) % vocab);
const mean = a => a.reduce((x, y) => x + y, 0) / a.length;
const sd = a => a.length < 2 ? 0 : Math.sqrt(a.reduce((x, y) => x + (y - mean(a)) ** 2, 0) / (a.length - 1));

async function timed(fn) {
  const seq = ctx.getSequence();
  const t0 = process.hrtime.bigint();
  await fn(seq);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  seq.dispose();
  return s;
}
async function test(name, n, fn) {
  if (n === 0) return;
  await timed(fn);
  const r = [];
  for (let i = 0; i < opt.reps; ++i) r.push(n / await timed(fn));
  console.log(`| llama.cpp ${llama.llamaCppRelease?.release ?? ""} | ${opt.threads} | ${opt.fa ? "fa" : "no fa"} | ${name} | ${mean(r).toFixed(2)} ± ${sd(r).toFixed(2)} |`);
}
console.log(`| llama.cpp | threads | attention | test | t/s |`);
console.log(`| --- | ---: | --- | --- | ---: |`);
const prompt = ids(opt.pp);
await test(`pp${opt.pp}`, opt.pp, s => s.evaluateWithoutGeneratingNewTokens(prompt));
const gen = ids(opt.tg);
await test(`tg${opt.tg}`, opt.tg, async s => { for (const t of gen) await s.evaluateWithoutGeneratingNewTokens([t]); });
await ctx.dispose();
await model.dispose();

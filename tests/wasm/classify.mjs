// Runs the wasm classifier (web/pkg, built by scripts/build-wasm.sh) under node.
//
//   node tests/wasm/classify.mjs PKG_DIR CHECKPOINT_DIR RULES_JSON QUERIES_JSON
//
// Prints one JSON object: {learned: [...], rules: [...], errors: {...}}, where each result
// is what QueryClassifier.classify returned for the query at that index.
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [pkgDir, ckptDir, rulesFile, queriesFile] = process.argv.slice(2);
const wasm = await import(pathToFileURL(resolve(pkgDir, 'classifier.js')).href);
wasm.initSync({ module: readFileSync(join(pkgDir, 'classifier_bg.wasm')) });

const learned = wasm.QueryClassifier.fromCheckpoint(
  readFileSync(join(ckptDir, 'classifier.json')),
  readFileSync(join(ckptDir, 'model.safetensors')),
);
const rules = wasm.QueryClassifier.fromRules(readFileSync(rulesFile, 'utf8'));
const queries = JSON.parse(readFileSync(queriesFile, 'utf8'));

const message = (f) => {
  try {
    f();
    return null;
  } catch (e) {
    return String(e.message ?? e);
  }
};
const out = {
  learned_version: learned.version,
  rules_version: rules.version,
  categories: learned.categories,
  learned: queries.map((q) => learned.classify(q)),
  rules: queries.map((q) => rules.classify(q)),
  errors: {
    empty: message(() => learned.classify('   ')),
    bad_checkpoint: message(() =>
      wasm.QueryClassifier.fromCheckpoint(new TextEncoder().encode('{}'), new Uint8Array(3)),
    ),
    bad_rules: message(() => wasm.QueryClassifier.fromRules('{"categories": 1}')),
  },
};
console.log(JSON.stringify(out));

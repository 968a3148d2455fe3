// Signs a route hint with the edge worker's own code (web/edge/worker.mjs), for the test
// that checks the gateway verifies what WebCrypto signed, and rejects a tampered copy.
//
//   EDGE_SECRET=... node tests/browser/sign.mjs KEY_ID CATEGORY CONFIDENCE VERSION MESSAGES_JSON
//
// Prints the route_hint object as JSON.
import { sign, signingPayload } from '../../web/edge/worker.mjs';

const [keyId, category, confidence, version, messagesJson] = process.argv.slice(2);
const messages = JSON.parse(messagesJson);
const timestamp = Math.floor(Date.now() / 1000);
const conf = Number(confidence);
const payload = await signingPayload(category, conf, version, timestamp, messages);
const signature = await sign(process.env.EDGE_SECRET, payload);
console.log(JSON.stringify({ category, confidence: conf, classifier_version: version, signature, key_id: keyId, timestamp }));

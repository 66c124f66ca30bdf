// Parses an AsyncAPI document with the real parser (@asyncapi/parser, pinned in package-lock.json) and
// prints every diagnostic as one JSON line: {"severity": "error"|"warning"|"info"|"hint", "code", "message", "path"}.
// Exit status: 0 when the document parsed, 2 when it did not, 1 on bad usage.
// usage: node scripts/node/validate-asyncapi.mjs docs/mqtt/asyncapi.yaml
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Parser, fromFile } from "@asyncapi/parser";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate-asyncapi.mjs <asyncapi.yaml>");
  process.exit(1);
}
const severities = ["error", "warning", "info", "hint"];
const parser = new Parser();
// fromFile resolves the document's relative $refs (./guidance.schema.json) against its own folder.
const { document, diagnostics } = await fromFile(parser, resolve(file)).parse();
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: severities[d.severity] ?? String(d.severity), code: d.code, message: d.message, path: d.path }));
}
process.exit(document ? 0 : 2);

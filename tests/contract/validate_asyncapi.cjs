// Parses an AsyncAPI document with the official parser (@asyncapi/parser) and prints its
// diagnostics as JSON: [{code, message, severity, path}], severity 0 error, 1 warning, 2 info, 3 hint.
// Usage: node validate_asyncapi.cjs <node_modules dir> <document>
const { readFileSync } = require("node:fs");
const { Parser } = require(require.resolve("@asyncapi/parser", { paths: [process.argv[2]] }));

new Parser()
  .parse(readFileSync(process.argv[3], "utf8"))
  .then(({ diagnostics }) => {
    const shown = diagnostics.map((d) => ({ code: d.code, message: d.message, severity: d.severity, path: d.path }));
    process.stdout.write(JSON.stringify(shown));
  })
  .catch((error) => {
    process.stderr.write(String(error && error.stack ? error.stack : error));
    process.exit(2);
  });

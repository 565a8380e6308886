// Reads Mermaid text on stdin and parses it with Mermaid itself (on a jsdom window).
// Prints the diagram type and exits 0, or prints the parse error and exits 1.
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import("mermaid");

let text = "";
for await (const chunk of process.stdin) text += chunk;
try {
  const result = await mermaid.parse(text);
  console.log(result.diagramType);
} catch (error) {
  console.log(error.message);
  process.exit(1);
}

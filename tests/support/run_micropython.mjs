// Run Python code on real MicroPython (the WebAssembly port) under Node.
//
//   node run_micropython.mjs MANIFEST.json
//
// The manifest (written by tests/support/micropython.py) names:
//   module    absolute path of the package's micropython.mjs
//   heapsize  MicroPython heap in bytes
//   files     [[path in MicroPython's file system, path on this machine], ...]
//   sys_path  directories to append to sys.path
//   code      the Python source to run
//
// MicroPython's output goes to stdout. Exit status: 0 when the code ran to the
// end, 2 when it raised (the traceback goes to stderr), 3 when MicroPython
// could not be loaded or the manifest is bad.

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

function fail(status, message) {
  process.stderr.write(message.endsWith("\n") ? message : message + "\n");
  process.exitCode = status;
}

async function main() {
  const manifestPath = process.argv[2];
  if (!manifestPath) {
    fail(3, "usage: node run_micropython.mjs MANIFEST.json");
    return;
  }
  let manifest;
  let loadMicroPython;
  try {
    manifest = JSON.parse(fs.readFileSync(manifestPath, "utf8"));
    ({ loadMicroPython } = await import(pathToFileURL(manifest.module).href));
  } catch (err) {
    fail(3, "cannot load MicroPython: " + (err && err.stack ? err.stack : err));
    return;
  }

  const out = [];
  const mp = await loadMicroPython({
    heapsize: manifest.heapsize,
    stdout: (line) => out.push(line + "\n"),
    stderr: (line) => out.push(line + "\n"),
  });
  const flush = () => {
    if (out.length) process.stdout.write(out.splice(0).join(""));
  };

  for (const [target, source] of manifest.files) {
    mp.FS.mkdirTree(path.posix.dirname(target));
    mp.FS.writeFile(target, fs.readFileSync(source));
  }

  const setup = ["import sys"];
  for (const dir of manifest.sys_path) {
    setup.push("sys.path.append(" + JSON.stringify(dir) + ")");
  }
  try {
    mp.runPython(setup.join("\n"));
    mp.runPython(manifest.code);
  } catch (err) {
    flush();
    // A Python exception arrives as a PythonError whose message is the traceback.
    const kind = err && err.constructor ? err.constructor.name : "Error";
    const detail = err && err.message ? err.message : String(err);
    fail(2, "MicroPython raised (" + kind + "):\n" + detail);
    return;
  }
  flush();
}

await main();

// Offline check of deploy/docker (no container engine on the build machine; hadolint is in neither
// Debian nor npm as a runnable program). Each Dockerfile is
//  1. linted by dockerfile-utils (the Docker language server's validator: unknown instructions,
//     bad flags, malformed JSON forms, invalid ports/signals, ...): no diagnostics allowed;
//  2. checked for structure: a `build` stage and a different, final runtime stage; the final
//     stage runs as a non-root USER, COPYs only --from earlier stages, has a HEALTHCHECK that runs
//     grpc_health_probe (copied into it) against the gRPC port it EXPOSEs and the service listens
//     on; ENTRYPOINT is the binary copied in; every flag in CMD is an ABSL_FLAG of the binary's
//     *_main.cc; what the build stage COPYs exists and is not excluded by the Dockerfile's
//     .dockerignore; only the server image has CUDA;
//  3. checked against the binaries built here (args): every shared library ldd lists comes from a
//     Debian package the runtime stage installs (or from the base image, or is copied in).
// Then negative controls: broken copies must each be rejected. Exit 0 pass, 1 fail.
"use strict";
const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const { DockerfileParser } = require("dockerfile-ast");
const { validate } = require("dockerfile-utils");

const root = path.resolve(__dirname, "../..");
const images = {
  "ihip-server": { main: "services/attention/server_main.cc", grpcPort: 50051, metricsPort: 9101, cuda: true },
  "ihip-kvstore": { main: "services/kvstore/kvstore_main.cc", grpcPort: 50052, metricsPort: 9102, cuda: false },
};
// In debian:12-slim already (Essential/required packages).
const kBasePackages = new Set(["libc6", "libstdc++6", "libgcc-s1", "zlib1g"]);

function flagsOf(mainCc) {
  const src = fs.readFileSync(path.join(root, mainCc), "utf8");
  return new Set([...src.matchAll(/ABSL_FLAG\(\s*[\w:]+\s*,\s*(\w+)/g)].map((m) => m[1]));
}

// .dockerignore semantics (enough for ours): patterns in order, later ones win, `!` re-includes;
// `*` matches within one path segment, `**` across segments; a matching directory covers its files.
function ignored(ignoreText, file) {
  let out = false;
  for (let line of ignoreText.split("\n")) {
    line = line.trim();
    if (!line || line.startsWith("#")) continue;
    const neg = line.startsWith("!");
    const pat = (neg ? line.slice(1) : line).replace(/\/$/, "").replace(/^\//, "");
    const re = new RegExp("^" + pat.split("**").map((p) => p.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]")).join(".*") + "(/.*)?$");
    if (re.test(file)) out = !neg;
  }
  return out;
}

function instructionsByStage(text) {
  const df = DockerfileParser.parse(text);
  const args = {};
  const stages = [];
  for (const ins of df.getInstructions()) {
    const kw = ins.getKeyword();
    const content = ins.getTextContent().replace(/^\s*\w+\s*/, "");
    if (kw === "FROM") {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(content.trim());
      const image = m ? m[1].replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => args[a || b] || "") : "";
      stages.push({ image, name: m && m[2] ? m[2].toLowerCase() : "", ins: [] });
    } else if (kw === "ARG" && stages.length === 0) {
      const m = /^(\w+)=(.*)$/.exec(content.trim());
      if (m) args[m[1]] = m[2];
    } else if (stages.length) {
      stages[stages.length - 1].ins.push({ kw, content, ins });
    }
  }
  return stages;
}

function aptPackages(stage) {
  const pkgs = new Set();
  for (const i of stage.ins.filter((x) => x.kw === "RUN")) {
    for (const m of i.content.matchAll(/apt-get install((?:\s+(?:-[\w-]+|[a-z0-9][a-z0-9.+-]+)|\s*\\\s*\n)+)/g)) {
      for (const w of m[1].split(/\s+/)) if (w && !w.startsWith("-") && w !== "\\") pkgs.add(w);
    }
  }
  return pkgs;
}

function jsonArgs(content) {
  try { const v = JSON.parse(content.replace(/\\\n/g, " ")); return Array.isArray(v) ? v : null; } catch (e) { return null; }
}

// Installed Debian packages and their dependencies (dpkg's database; no network).
let dependsCache = null;
function withDependencies(pkgs) {
  if (!dependsCache) {
    dependsCache = new Map();
    const out = execFileSync("dpkg-query", ["-W", "-f=${Package}\t${Depends},${Pre-Depends}\n"], { encoding: "utf8", maxBuffer: 64 << 20 });
    for (const line of out.split("\n")) {
      const [p, d] = line.split("\t");
      if (p) dependsCache.set(p, (d || "").split(",").map((x) => x.trim().split(/[\s|:(]/)[0]).filter(Boolean));
    }
  }
  const all = new Set(pkgs);
  const todo = [...pkgs];
  while (todo.length) for (const d of dependsCache.get(todo.pop()) || []) if (!all.has(d)) { all.add(d); todo.push(d); }
  return all;
}

// Debian packages that provide the shared libraries `binary` links.
function runtimePackages(binary) {
  const pkgs = new Map();
  const out = execFileSync("ldd", [binary], { encoding: "utf8" });
  const sos = [...out.matchAll(/^\s*(\S+) => (\S+)/gm)].map((m) => m[1]);
  // One dpkg -S for all of them ("pkg[, pkg]: /path" lines; unowned ones go to stderr).
  let owners = "";
  try {
    owners = execFileSync("dpkg", ["-S", ...sos.map((so) => `*/x86_64-linux-gnu/${so}`)], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  } catch (e) { owners = e.stdout || ""; }
  for (const so of sos) {
    if (so.startsWith("libcudart.so")) { pkgs.set("(copied) " + so, so); continue; }
    const line = owners.split("\n").find((l) => l.endsWith(`/${so}`));
    pkgs.set(line ? line.split(":")[0] : "(no package) " + so, so);
  }
  return pkgs;
}

function checkImage(name, text, ignoreText, needed) {
  const cfg = images[name];
  const errors = [];
  for (const d of validate(text)) errors.push(`line ${d.range.start.line + 1}: ${d.message}`);
  const stages = instructionsByStage(text);
  const build = stages.find((s) => s.name === "build");
  const final = stages[stages.length - 1];
  if (stages.length < 2 || !build) return errors.concat(["needs a stage named `build` and a runtime stage after it"]);
  if (final === build || final.image === build.image) errors.push(`the final stage must not be the build image (${final.image})`);
  const of = (kw) => final.ins.filter((i) => i.kw === kw);
  // non-root
  const users = of("USER");
  const user = users.length ? users[users.length - 1].content.trim().split(":")[0] : "";
  if (!user || user === "root" || user === "0") errors.push(`the final stage must run as a non-root USER (got "${user || "none"}")`);
  // copies into the final stage: only from earlier stages
  const copies = of("COPY").map((i) => i.content);
  if (copies.some((c) => !/--from=\w+/.test(c))) errors.push("the final stage must COPY only --from earlier stages");
  const stageNames = new Set(stages.slice(0, -1).map((s) => s.name));
  for (const c of copies) { const m = /--from=(\w+)/.exec(c); if (m && !stageNames.has(m[1])) errors.push(`COPY --from=${m[1]}: no such stage`); }
  if (!copies.some((c) => /--from=build\b/.test(c) && c.includes(`/${name}`))) errors.push(`the final stage must COPY ${name} --from=build`);
  // entrypoint, cmd flags, ports, healthcheck
  const ep = of("ENTRYPOINT").map((i) => jsonArgs(i.content)).pop();
  if (!ep || ep[0] !== `/usr/local/bin/${name}`) errors.push(`ENTRYPOINT must be ["/usr/local/bin/${name}"] (exec form)`);
  const cmd = of("CMD").map((i) => jsonArgs(i.content)).pop() || [];
  const flags = flagsOf(cfg.main);
  for (const a of cmd) {
    const f = /^--(\w+)/.exec(a);
    if (!f || !flags.has(f[1])) errors.push(`CMD ${a}: not a flag of ${name} (${cfg.main})`);
  }
  if (!cmd.includes(`--grpc_address=0.0.0.0:${cfg.grpcPort}`)) errors.push(`CMD must listen on 0.0.0.0:${cfg.grpcPort}`);
  if (!cmd.includes("--metrics_host=0.0.0.0") || !cmd.includes(`--metrics_port=${cfg.metricsPort}`)) errors.push(`CMD must serve /metrics on 0.0.0.0:${cfg.metricsPort}`);
  const exposed = of("EXPOSE").flatMap((i) => i.content.trim().split(/\s+/)).map((p) => Number(p.split("/")[0]));
  for (const p of [cfg.grpcPort, cfg.metricsPort]) if (!exposed.includes(p)) errors.push(`EXPOSE ${p} missing`);
  const hc = of("HEALTHCHECK").map((i) => i.content).pop() || "";
  const hcCmd = jsonArgs(hc.replace(/^[\s\S]*?\bCMD\s+/, "")) || [];
  if (hcCmd[0] !== "grpc_health_probe" || !hcCmd.includes(`-addr=127.0.0.1:${cfg.grpcPort}`)) errors.push(`HEALTHCHECK must run grpc_health_probe -addr=127.0.0.1:${cfg.grpcPort}`);
  if (!copies.some((c) => /--from=\w+/.test(c) && /\/usr\/local\/bin\/grpc_health_probe\s*$/.test(c))) errors.push("grpc_health_probe must be copied into the final stage");
  // the build stage's context copies exist and pass the .dockerignore
  for (const c of build.ins.filter((i) => i.kw === "COPY").map((i) => i.content.trim().split(/\s+/))) {
    for (const src of c.slice(0, -1).filter((s) => !s.startsWith("--"))) {
      if (!fs.existsSync(path.join(root, src))) errors.push(`COPY ${src}: not in the repository`);
      else if (ignored(ignoreText, src)) errors.push(`COPY ${src}: excluded by the .dockerignore`);
    }
  }
  for (const junk of ["build/build.ninja", "build-deploy/CMakeCache.txt", "data/logs", ".git/HEAD", "tests/deploy/node_modules/x"]) {
    if (!ignored(ignoreText, junk)) errors.push(`.dockerignore lets ${junk} into the build context`);
  }
  // CUDA only in the server image
  const buildPkgs = aptPackages(build);
  const hasNvcc = [...buildPkgs].some((p) => p.startsWith("cuda-nvcc-13"));
  if (cfg.cuda && !(hasNvcc && text.includes("IHIP_HAVE_CUDA:") && copies.some((c) => c.includes("/lib")))) errors.push("the server image must build with nvcc 13, check that CMake found it, and carry libcudart");
  if (!cfg.cuda && /cuda/i.test(stages.map((s) => s.ins.map((i) => i.content).join("\n")).join("\n"))) errors.push("the kvstore image must not use CUDA");
  // the build stage installs what deploy/local/install-deps.sh builds with
  const deps = fs.readFileSync(path.join(root, "deploy/local/install-deps.sh"), "utf8");
  const list = /IHIP_PACKAGES=\(([\s\S]*?)\)/.exec(deps)[1].split(/\s+/).filter((p) => p && !/^(ccache|python3-|prometheus$|#)/.test(p));
  for (const p of list) if (!buildPkgs.has(p)) errors.push(`build stage lacks ${p} (deploy/local/install-deps.sh builds with it)`);
  // the runtime stage has every library the binary links
  const runtime = withDependencies(aptPackages(final));
  for (const [pkg, so] of needed) {
    if (pkg.startsWith("(copied)")) {
      if (!(cfg.cuda && copies.some((c) => c.includes("/out/lib")))) errors.push(`${so} is linked but not copied into the image`);
    } else if (!kBasePackages.has(pkg) && !runtime.has(pkg)) errors.push(`runtime stage lacks ${pkg} (${so}, linked by ${name})`);
  }
  return errors;
}

function main() {
  const bins = {};
  for (let i = 2; i + 1 < process.argv.length; i += 2) bins[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
  let failed = 0;
  const loaded = {};
  for (const name of Object.keys(images)) {
    const file = path.join(root, `deploy/docker/${name}.Dockerfile`);
    const text = fs.readFileSync(file, "utf8");
    const ignoreText = fs.readFileSync(`${file}.dockerignore`, "utf8");
    if (!bins[name]) { console.log(`FAIL: pass --${name} <binary>`); process.exit(1); }
    const needed = runtimePackages(bins[name]);
    loaded[name] = { text, ignoreText, needed };
    const errors = checkImage(name, text, ignoreText, needed);
    if (errors.length) { failed++; console.log(`FAIL ${name}.Dockerfile:\n  ${errors.join("\n  ")}`); }
    else console.log(`ok   ${name}.Dockerfile: lint clean, ${instructionsByStage(text).length} stages, non-root, health-checked; runtime covers ${[...needed.keys()].join(" ")}`);
  }
  const s = loaded["ihip-server"], k = loaded["ihip-kvstore"];
  const controls = [
    ["misspelt instruction", "ihip-server", s.text.replace("\nWORKDIR /src", "\nWORKDIRR /src"), s.ignoreText],
    ["runs as root", "ihip-kvstore", k.text.replace("USER 10001:10001", "USER root"), k.ignoreText],
    ["no USER", "ihip-server", s.text.replace("USER 10001:10001\n", ""), s.ignoreText],
    ["no HEALTHCHECK", "ihip-kvstore", k.text.replace(/HEALTHCHECK[^\n]*\\\n[^\n]*\n/, ""), k.ignoreText],
    ["health check on the metrics port", "ihip-server", s.text.replace("-addr=127.0.0.1:50051", "-addr=127.0.0.1:9101"), s.ignoreText],
    ["single stage", "ihip-kvstore", k.text.replace(/FROM \$\{RUNTIME_IMAGE\} AS runtime[\s\S]*?COPY --from=build[^\n]*\n/, ""), k.ignoreText],
    ["runtime copies from the context", "ihip-server", s.text.replace("COPY --from=build /out/bin/ihip-server", "COPY build/services/attention/ihip-server"), s.ignoreText],
    ["unknown flag in CMD", "ihip-kvstore", k.text.replace("--host_tier_gib=4", "--host_tier_gb=4"), k.ignoreText],
    ["listens on loopback only", "ihip-server", s.text.replace('"--grpc_address=0.0.0.0:50051"', '"--grpc_address=127.0.0.1:50051"'), s.ignoreText],
    ["runtime lacks libgrpc++", "ihip-server", s.text.replace(/(runtime[\s\S]*?)libgrpc\+\+1\.51 /, "$1"), s.ignoreText],
    ["runtime lacks librocksdb", "ihip-kvstore", k.text.replace(" librocksdb7.8", ""), k.ignoreText],
    ["build stage without nvcc", "ihip-server", s.text.replace(" cuda-nvcc-13-0", ""), s.ignoreText],
    [".dockerignore drops engine/", "ihip-kvstore", k.text, k.ignoreText.replace("!engine/\n", "")],
    [".dockerignore lets build trees in", "ihip-server", s.text, "*\n!*\n"],
  ];
  for (const [what, name, text, ignoreText] of controls) {
    const base = name === "ihip-server" ? s : k;
    if (text === base.text && ignoreText === base.ignoreText) { failed++; console.log(`FAIL negative control "${what}": the mutation did not apply`); continue; }
    const errors = checkImage(name, text, ignoreText, loaded[name].needed);
    if (errors.length === 0) { failed++; console.log(`FAIL negative control "${what}": accepted`); }
    else console.log(`ok   negative control "${what}": rejected (${errors[0].slice(0, 100)})`);
  }
  if (failed) { console.log(`${failed} check(s) failed`); process.exit(1); }
  console.log("Dockerfiles: all checks passed");
}

main();
